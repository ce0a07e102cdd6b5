"""The ``medmap`` command: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

from medmap.cli_baseline import add_baseline_parsers
from medmap.cli_downstream import add_downstream_parsers


def _cmd_validate(a: argparse.Namespace) -> int:
    from medmap.data.manifest import Manifest, ManifestError
    from medmap.data.validate import validate_manifest

    try:
        manifest = Manifest.load(a.manifest)
    except ManifestError as e:
        print(e, file=sys.stderr)
        return 1
    problems = validate_manifest(manifest, check_files=not a.no_files)
    for p in problems:
        print(p)
    if problems:
        print(f"{a.manifest}: {len(problems)} problem(s) in {len(manifest)} cases", file=sys.stderr)
        return 1
    print(f"{a.manifest}: {len(manifest)} cases, no problems")
    return 0


def _cmd_simulate(a: argparse.Namespace) -> int:
    from medmap.data.sim import simulate

    m = simulate(a.out, cases=a.cases, size=a.size, seed=a.seed, organs=a.organs,
                 workers=a.workers, progress=True, compress=a.compress)
    print(f"wrote {len(m)} cases to {Path(a.out) / 'manifest.jsonl'} "
          f"(datasheet: {Path(a.out) / 'DATASHEET.md'})")
    return 0


def _cmd_import_lld(a: argparse.Namespace) -> int:
    import warnings

    from medmap.data.sources.lld_mmri import import_lld_mmri

    mask_dir = a.mask_dir
    if a.full_volumes and mask_dir is None:
        mask_dir = f"{Path(a.out).with_suffix('')}_masks"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = import_lld_mmri(a.root, labels_file=a.labels, fold=a.fold,
                            full_volumes=a.full_volumes, mask_dir=mask_dir)
    for w in caught:  # the importer's notes (folder used, missing phases, boxes without mask)
        print(f"warning: {w.message}", file=sys.stderr)
    m.save(a.out)
    print(f"wrote {len(m)} cases to {a.out}"
          + (f" (lesion masks in {mask_dir})" if a.full_volumes else ""))
    return 0


def _cmd_import_radgenome(a: argparse.Namespace) -> int:
    import warnings

    from medmap.data.sources.radgenome import import_radgenome

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = import_radgenome(a.root, subsets=a.subsets, image_root=a.image_root,
                             skip_missing=a.skip_missing)
    for w in caught:  # the importer's notes (skipped cases, missing sequences or masks, ...)
        print(f"warning: {w.message}", file=sys.stderr)
    m.save(a.out)
    print(f"wrote {len(m)} cases to {a.out}")
    return 0


# ---- checks before a command starts (light: no torch import) ---------------------------------
def _writable_dir(path: str | Path, option: str, shown: str | Path | None = None) -> None:
    """Refuse an output folder that cannot be written (checked before any work starts): the
    folder, or the nearest existing folder above it, must accept a new file. ``shown``: the
    option's value as given (default: ``path``)."""
    import tempfile

    from medmap.config import UserError

    path_shown = path if shown is None else shown
    p = Path(path).absolute()
    anc = p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"{option} {path_shown}: {anc} is a file, not a folder; choose another "
                        f"{option}")
    try:
        with tempfile.TemporaryFile(dir=anc, prefix=".medmap-write-check-"):
            pass
    except OSError as e:
        raise UserError(f"{option} {path_shown}: cannot write into {anc} ({e.strerror or e}); "
                        f"choose a writable {option} folder or fix its permissions") from None


def _writable_file(path: str | Path, option: str) -> None:
    """Refuse an output file that cannot be written (its folder, or the file itself)."""
    from medmap.config import UserError

    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name, e.g. {p / 'preds.csv'}")
    _writable_dir(p.absolute().parent, option, shown=path)
    if p.exists():
        try:
            with p.open("a"):
                pass
        except OSError as e:
            raise UserError(f"{option} {path}: cannot write the file ({e.strerror or e}); "
                            f"choose another {option}") from None


def _experiment(a: argparse.Namespace):
    from medmap.config import load_config
    from medmap.train.config import ExperimentConfig

    return load_config(ExperimentConfig, a.config, a.overrides)


def _cmd_pretrain(a: argparse.Namespace) -> int:
    _writable_dir(a.run_dir, "--run-dir")
    cfg = _experiment(a)
    from medmap.train.stage import check_run_dir

    check_run_dir(a.run_dir, a.resume, a.overwrite)     # before any data is read
    if a.recipe == "mg3d":
        from medmap.train.mg3d import pretrain_mg3d as run
    else:
        from medmap.train.medmap import pretrain as run

    out = run(cfg, a.run_dir, resume=a.resume, overwrite=a.overwrite)
    print(f"pre-trained ({a.recipe}): {out}")
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    _writable_dir(a.run_dir, "--run-dir")
    cfg = _experiment(a)
    from medmap.train.stage import check_run_dir

    check_run_dir(a.run_dir, a.resume, a.overwrite)     # before any data is read
    from medmap.train.medmap import finetune

    out = finetune(cfg, a.run_dir, init=a.init, resume=a.resume, overwrite=a.overwrite)
    print(f"fine-tuned model: {out}")
    return 0


def _default_eval_dir(run: str, split: str) -> Path:
    """Where ``evaluate`` writes without ``--out``: next to the model folder (``RUN/model`` of a
    run folder, else RUN itself), as ``eval-SPLIT``."""
    p = Path(run)
    mdir = p / "model" if not (p / "config.json").exists() and (p / "model" / "config.json"
                                                                 ).exists() else p
    return mdir.resolve().parent / f"eval-{split}"


def _cmd_evaluate(a: argparse.Namespace) -> int:
    _writable_dir(a.out if a.out is not None else _default_eval_dir(a.run, a.split),
                  "--out")
    from medmap.eval.evaluate import evaluate

    res = evaluate(a.run, a.manifest, split=a.split, out_dir=a.out, n_cam_cases=a.n_cam_cases,
                   batch_size=a.batch_size, n_boot=a.n_boot, localise=not a.no_localise,
                   device=a.device, cache_dir=a.cache_dir)
    m, info = res["metrics"], res["info"]
    if m is None:       # no labelled case: predictions only
        print(f"{a.split}: n={info['cases']} case(s), none labelled: no classification metrics "
              "(the predictions are in predictions.csv)")
    else:
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
        print(f"{a.split}: n={m['n']} accuracy={m['accuracy']:.3f} "
              f"balanced_accuracy={m['balanced_accuracy']:.3f} auc={auc}")
    for name, path in res["files"].items():
        print(f"{name}: {path}")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from medmap.config import UserError

    source = a.input
    if a.series is not None:
        if not Path(a.input).is_dir():
            raise UserError(f"--series {a.series}: INPUT {a.input} is not a folder; --series "
                            "picks one series of a DICOM folder holding several")
        source = f"{str(a.input).rstrip('/')}#{a.series.strip()}"
    _writable_file(a.out, "--out")
    if a.cam is not None:
        _writable_dir(a.cam, "--cam")
    from medmap.predict import predict

    rows = predict(a.model, source, a.out, cam_dir=a.cam, modality=a.modality, device=a.device,
                   roi=a.roi, fast=not a.no_fast_path, precision=a.precision, mask=a.mask)
    from medmap.inference import csa_description
    from medmap.inference import resolve_model_dir
    from medmap.models.hub import load_pretrained_config

    cfg = SimpleNamespace(**load_pretrained_config(resolve_model_dir(a.model))["config"])
    print(f"wrote {len(rows)} prediction(s) to {a.out}" + (f"; CAMs in {a.cam}" if a.cam else "")
          + f"\ntext guidance: {csa_description(cfg)}")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from medmap.bundle import export_monai_bundle

    out = export_monai_bundle(a.model, a.out, overwrite=a.overwrite)
    print(f"MONAI bundle: {out}\nrun it: python -m monai.bundle run --config_file "
          f"{out}/configs/inference.json --bundle_root {out} --dataset_dir CASE_FOLDER "
          "--output_dir preds")
    return 0


def _cmd_ablation(a: argparse.Namespace) -> int:
    from medmap.ablation import ROWS, run_ablation

    run_ablation(_experiment(a), a.out, seeds=a.seeds, rows=a.rows or tuple(ROWS),
                 split=a.split)
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from medmap.demo import run_demo

    run_demo(a.out, full=a.full, seed=a.seed, quick=a.quick,
             organs=tuple(a.organs) if a.organs else None,
             side_by_side=False if a.in_turn else None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from medmap import __version__

    p = argparse.ArgumentParser(prog="medmap", description=__doc__)
    p.add_argument("--version", action="version", version=f"medmap {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="manifests, validation, simulator, importers")
    dsub = data.add_subparsers(dest="data_command", required=True)

    v = dsub.add_parser("validate", help="report every problem in a manifest, one line each")
    v.add_argument("manifest", help="JSONL / CSV manifest to check")
    v.add_argument("--no-files", action="store_true",
                   help="check the schema only (do not read the volumes)")
    v.set_defaults(func=_cmd_validate)

    s = dsub.add_parser("simulate", help="write the MedMoM-Sim benchmark")
    s.add_argument("--out", required=True,
                   help="output folder (volumes, manifest.jsonl, DATASHEET.md)")
    s.add_argument("--cases", type=int, default=60, help="cases per organ (default: 60)")
    s.add_argument("--size", type=int, default=64, help="volume side in voxels (default: 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--organs", nargs="+", default=["liver", "brain"],
                   help="organs to simulate (default: liver brain)")
    s.add_argument("--workers", type=int, default=None,
                   help="parallel worker processes (default: one per CPU core)")
    s.add_argument("--compress", action="store_true",
                   help="write the volumes as .nii.gz (default: .nii, faster to write and read)")
    s.set_defaults(func=_cmd_simulate)

    lld = dsub.add_parser("import-lld-mmri", help="LLD-MMRI layout to a manifest")
    lld.add_argument("root", help="the release folder (images/, labels/, classification_dataset/),"
                                  " the test archive's folder, or classification_dataset/")
    lld.add_argument("--out", default="cases.jsonl",
                     help="manifest to write (default: cases.jsonl)")
    lld.add_argument("--labels", default=None, help="labels file (default: found under ROOT)")
    lld.add_argument("--fold", type=int, default=None,
                     help="cross-validation fold whose validation cases become the val split "
                          "(default: none)")
    lld.add_argument("--full-volumes", action="store_true",
                     help="whole volumes (images/ + labels/Annotation.json) instead of the "
                          "pre-cropped ROIs; the 3D lesion boxes become masks")
    lld.add_argument("--mask-dir", default=None,
                     help="where --full-volumes writes the lesion masks (default: OUT's name + "
                          "'_masks')")
    lld.set_defaults(func=_cmd_import_lld)

    rg = dsub.add_parser("import-radgenome", help="RadGenome-Brain MRI to a manifest")
    rg.add_argument("root", help="the RadGenome-Brain MRI release folder (reports and splits)")
    rg.add_argument("--out", default="cases.jsonl",
                    help="manifest to write (default: cases.jsonl)")
    rg.add_argument("--subsets", nargs="+", default=None,
                    help="subsets to import, e.g. BraTS_GLI ISLES22 (default: all)")
    rg.add_argument("--image-root", action="append", default=None, metavar="[SUBSET=]PATH",
                    help="folder the challenge downloads were unpacked into, searched "
                         "recursively for each case; SUBSET=PATH for one subset only "
                         "(repeatable)")
    rg.add_argument("--skip-missing", action="store_true",
                    help="leave out cases whose images are not found (and say how many) "
                         "instead of failing")
    rg.set_defaults(func=_cmd_import_radgenome)

    for name, helptext in (("pretrain", "stage 1: modality-aware vision-language pre-training"),
                           ("finetune", "stage 2: fine-tune MedMAP (CSA + CCT) for detection")):
        t = sub.add_parser(name, help=helptext)
        t.add_argument("--config", default=None, help="YAML file (see configs/)")
        t.add_argument("--run-dir", default=f"runs/{name}",
                       help=f"run folder: config, logs, checkpoints, model/ (default: "
                            f"runs/{name}); one that already holds a run needs --resume or "
                            "--overwrite")
        t.add_argument("--resume", action="store_true", help="continue from RUN_DIR's last.ckpt")
        t.add_argument("--overwrite", action="store_true",
                       help="start again in a RUN_DIR that holds a run: its checkpoints, model, "
                            "logs and metrics are removed first")
        if name == "finetune":
            t.add_argument("--init", default=None, help="pre-trained model folder (runs/pretrain/model)")
        else:
            t.add_argument("--recipe", choices=("medmap", "mg3d"), default="medmap",
                           help="medmap: modality-aware contrastive (default); mg3d: multi-grained")
        t.add_argument("overrides", nargs="*", help="config overrides, e.g. finetune.epochs=5")
        t.set_defaults(func=_cmd_pretrain if name == "pretrain" else _cmd_finetune)

    e = sub.add_parser("evaluate", help="metrics, CAMs and an HTML report for a trained model")
    e.add_argument("run", help="a run folder (uses RUN/model) or a model folder")
    e.add_argument("--manifest", default=None, help="default: the run's data.manifest")
    e.add_argument("--split", default="test",
                   help="split to evaluate: train, val or test (default: test)")
    e.add_argument("--out", default=None,
                   help="output folder for metrics.json, predictions.csv, report.html "
                        "(default: RUN/eval-SPLIT)")
    e.add_argument("--n-cam-cases", type=int, default=2,
                   help="CAM overlays in the report per class, for correct and for wrong "
                        "predictions each (default: 2)")
    e.add_argument("--batch-size", type=int, default=4, help="inference batch size (default: 4)")
    e.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples for the confidence intervals (default: 1000)")
    e.add_argument("--no-localise", action="store_true",
                   help="skip the Grad-CAM localisation metrics on cases with a lesion mask")
    e.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: CUDA when available, else the CPU)")
    e.add_argument("--cache-dir", default=None, help="preprocessed-volume cache folder")
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="predict new cases (no report needed)")
    pr.add_argument("model", help="a model folder or run folder")
    pr.add_argument("input", help="a manifest, a case folder or a single volume")
    pr.add_argument("--out", default="preds.csv",
                    help="CSV to write, one row per case (default: preds.csv)")
    pr.add_argument("--cam", default=None, help="write CAM NIfTIs in the input space here")
    pr.add_argument("--modality", default=None, help="modality of a single-volume input")
    pr.add_argument("--roi", default=None, metavar="FILE",
                    help="organ mask of a single-volume / case-folder input, for models trained "
                         "with preprocess.roi_mask")
    pr.add_argument("--mask", default=None, metavar="FILE",
                    help="lesion mask of a single-volume / case-folder input, for models that "
                         "read it (mask pooling, region features); the --roi file when the "
                         "model's ROI is the lesion")
    pr.add_argument("--series", default=None, metavar="UID",
                    help="SeriesInstanceUID of the series to read when INPUT is a DICOM folder "
                         "holding several (same as INPUT#UID)")
    pr.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: CUDA when available, else the CPU)")
    pr.add_argument("--no-fast-path", action="store_true",
                    help="run the plain eager model instead of the fast inference path "
                         "(medmap.fastpath: fused window attention, fp32, same predictions; "
                         "the default)")
    pr.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="fast path numerics: fp32 (default) or bf16 autocast in the experts "
                         "and conv streams (faster on CPU; probabilities change slightly, see "
                         "docs/benchmarks.md)")
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser("export", help="write a trained classifier in another format (a MONAI "
                                       "bundle)")
    ex.add_argument("model", help="a model folder or run folder")
    ex.add_argument("out", help="output folder (new or empty)")
    ex.add_argument("--format", choices=["monai-bundle"], default="monai-bundle",
                    help="monai-bundle: configs/metadata.json + inference.json, "
                         "models/model.safetensors, docs/README.md (default)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    ex.set_defaults(func=_cmd_export)

    ab = sub.add_parser("ablation", help="Table 2 rows (baseline, +MAVLP, +CCT, +CSA) and the "
                                         "language-removed and global-CLIP controls over seeds")
    ab.add_argument("--config", default=None, help="experiment YAML, e.g. configs/demo.yaml")
    ab.add_argument("--out", default="runs/ablation", help="output folder (runs + ablation.json)")
    ab.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (paired)")
    ab.add_argument("--rows", nargs="+", default=None,
                    help="rows to run (default: all: baseline +MAVLP +CCT +CSA "
                         "language-removed global-CLIP report-assisted radiomics)")
    ab.add_argument("--split", default="test", help="evaluation split")
    ab.add_argument("overrides", nargs="*", help="config overrides, e.g. finetune.epochs=5")
    ab.set_defaults(func=_cmd_ablation)

    d = sub.add_parser("demo", help="run the end-to-end demo on the embedded benchmark")
    d.add_argument("--out", default="medmap-demo",
                   help="output folder: data, runs, reports, summary.json (default: medmap-demo)")
    d.add_argument("--quick", action="store_true",
                   help="the first thing to try: the whole pipeline on the brain at a small "
                        "size in about a minute (same output layout)")
    d.add_argument("--organs", nargs="+", choices=["liver", "brain"], default=None,
                   help="organs to run (default: liver and brain; --quick: brain)")
    d.add_argument("--full", action="store_true",
                   help="larger, slower setting: 64^3, Swin experts, 350 + 200 cases, 60 epochs")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of the simulation and the training runs (default: 0)")
    d.add_argument("--in-turn", action="store_true",
                   help="train the organs one after the other in this process instead of side "
                        "by side, one worker per core (about half the memory, ~1.2x the CPU)")
    d.set_defaults(func=_cmd_demo)

    add_downstream_parsers(sub)
    add_baseline_parsers(sub)
    return p


# OSError numbers that are the user's environment, not a bug: permissions, space, paths
_USER_ERRNOS = ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "ENOTDIR", "EISDIR", "ENOENT",
                "EEXIST", "ENAMETOOLONG")


def report_error(e: BaseException) -> int:
    """Print ``e`` for the command line and return the exit status.

    A deliberate user-facing error (:class:`medmap.config.UserError`: ConfigError,
    ManifestError, VolumeReadError, PredictInputError, ModelFolderError, ...), a missing file,
    a permission / disk-space problem or a checkpoint refused by the weights-only loader is one
    ``error: ...`` line (exit 2). Anything else is a bug: its traceback, then a line saying so
    (exit 1).
    """
    import errno
    import pickle
    import traceback

    from medmap.config import UserError

    if isinstance(e, (UserError, FileNotFoundError)):
        print(f"error: {e}", file=sys.stderr)
        return 2
    user_errnos = {getattr(errno, n) for n in _USER_ERRNOS if hasattr(errno, n)}
    if isinstance(e, OSError) and e.errno in user_errnos:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; check the path and its permissions (and free "
              "space), or choose another output folder", file=sys.stderr)
        return 2
    if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
        print("error: refused to load a checkpoint that holds arbitrary Python objects (medmap "
              "loads weights-only checkpoints and safetensors only; this file was not written "
              "by medmap or was tampered with): "
              + str(e).strip().splitlines()[0], file=sys.stderr)
        return 2
    traceback.print_exception(e)
    print(f"error: internal error ({type(e).__name__}: {e}); this is a bug in medmap, not in "
          "your input: please report it with the traceback above", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medmap`` console command (exit status: 0 done, 1 an internal bug,
    2 a usage / input error; see :func:`report_error`)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs
        return report_error(e)


if __name__ == "__main__":
    sys.exit(main())
