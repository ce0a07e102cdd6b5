"""The ``medmap`` command: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
                 workers=a.workers, progress=True)
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


def _experiment(a: argparse.Namespace):
    from medmap.config import load_config
    from medmap.train.config import ExperimentConfig

    return load_config(ExperimentConfig, a.config, a.overrides)


def _cmd_pretrain(a: argparse.Namespace) -> int:
    if a.recipe == "mg3d":
        from medmap.train.mg3d import pretrain_mg3d as run
    else:
        from medmap.train.medmap import pretrain as run

    out = run(_experiment(a), a.run_dir, resume=a.resume)
    print(f"pre-trained ({a.recipe}): {out}")
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    from medmap.train.medmap import finetune

    out = finetune(_experiment(a), a.run_dir, init=a.init, resume=a.resume)
    print(f"fine-tuned model: {out}")
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from medmap.eval.evaluate import evaluate

    res = evaluate(a.run, a.manifest, split=a.split, out_dir=a.out, n_cam_cases=a.n_cam_cases,
                   batch_size=a.batch_size, n_boot=a.n_boot, localise=not a.no_localise,
                   device=a.device, cache_dir=a.cache_dir)
    m = res["metrics"]
    print(f"{a.split}: n={m['n']} accuracy={m['accuracy']:.3f} "
          f"balanced_accuracy={m['balanced_accuracy']:.3f} auc={m['auc']}")
    for name, path in res["files"].items():
        print(f"{name}: {path}")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from medmap.predict import predict

    rows = predict(a.model, a.input, a.out, cam_dir=a.cam, modality=a.modality, device=a.device,
                   roi=a.roi)
    print(f"wrote {len(rows)} prediction(s) to {a.out}" + (f"; CAMs in {a.cam}" if a.cam else ""))
    return 0


def _cmd_ablation(a: argparse.Namespace) -> int:
    from medmap.ablation import run_ablation

    run_ablation(_experiment(a), a.out, seeds=a.seeds, rows=a.rows, split=a.split)
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from medmap.demo import run_demo

    run_demo(a.out, full=a.full, seed=a.seed)
    return 0


# ---- downstream tasks of a pre-trained vision-language model (medmap.downstream) -----------
def _downstream_model(a: argparse.Namespace):
    """MODEL: a pre-trained model folder, or ``none`` (no pre-training; needs --config)."""
    if a.model.lower() not in ("none", "random"):
        return a.model
    if not a.config:
        raise ValueError("MODEL 'none' (no pre-training) needs --config: an experiment YAML "
                         "(e.g. a pre-training run's config.yaml) for architecture and data")
    from medmap.downstream.vlm import load_vlm

    return load_vlm(None, experiment=_experiment(argparse.Namespace(config=a.config,
                                                                     overrides=[])),
                    device=a.device, seed=a.seed)


def _cmd_zeroshot(a: argparse.Namespace) -> int:
    from medmap.downstream.zeroshot import zeroshot

    r = zeroshot(_downstream_model(a), a.manifest, split=a.split, prompts=a.prompts, out_dir=a.out,
                 modality=a.modality, cache_dir=a.cache_dir, batch_size=a.batch_size,
                 device=a.device, seed=a.seed)
    print(f"{a.split}: n={r['n']} macro_auc={r['macro_auc']} "
          f"accuracy={r['multiclass'].get('accuracy')}; {Path(a.out) / 'zeroshot.json'}")
    return 0


def _cmd_retrieve(a: argparse.Namespace) -> int:
    from medmap.downstream.retrieval import retrieval

    r = retrieval(_downstream_model(a), a.manifest, split=a.split, out_dir=a.out,
                  cache_dir=a.cache_dir, batch_size=a.batch_size, device=a.device, seed=a.seed)
    r2v = r["pair"]["report_to_volume"]
    print(f"{a.split}: n={r2v['n']} report->volume " + " ".join(
        f"{k}={r2v[k]:.3f}" for k in r2v if k.startswith("R@"))
        + f" median_rank={r2v['median_rank']}; {Path(a.out) / 'retrieval.json'}")
    return 0


def _cmd_segment(a: argparse.Namespace) -> int:
    from medmap.downstream.segment import segment

    r = segment(_downstream_model(a), a.manifest, a.out, modality=a.modality,
                train_split=a.train_split, eval_split=a.split, epochs=a.epochs,
                batch_size=a.batch_size, lr=a.lr, seed=a.seed, write_masks=not a.no_masks,
                cache_dir=a.cache_dir, device=a.device)
    print(f"{a.split}: dice={r['dice']} ({r['modality']}); {Path(a.out) / 'segment.json'}")
    return 0


def _cmd_generate_report(a: argparse.Namespace) -> int:
    from medmap.downstream.report_gen import report_generation

    r = report_generation(_downstream_model(a), a.manifest, a.out, train_split=a.train_split,
                          eval_split=a.split, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                          seed=a.seed, cache_dir=a.cache_dir, device=a.device)
    bleu = r["bleu"] or {}
    print(f"{a.split}: n={r['n_eval']} " + " ".join(f"{k}={v:.3f}" for k, v in bleu.items())
          + f"; {Path(a.out) / 'report_gen.json'}")
    return 0


def _cmd_probe(a: argparse.Namespace) -> int:
    from medmap.downstream.probe import probe

    r = probe(_downstream_model(a), a.manifest, a.out, mode=a.mode, train_split=a.train_split,
              eval_split=a.split, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
              seed=a.seed, cache_dir=a.cache_dir, device=a.device)
    m = r[a.split] or {}
    print(f"{a.split} ({a.mode}): n={m.get('n', 0)} accuracy={m.get('accuracy')} "
          f"auc={m.get('auc')}; {Path(a.out) / f'probe-{a.mode}.json'}")
    return 0


def _cmd_embed(a: argparse.Namespace) -> int:
    from medmap.downstream.embed import export_embeddings

    r = export_embeddings(_downstream_model(a), a.manifest, a.out, split=a.split,
                          cache_dir=a.cache_dir, batch_size=a.batch_size, device=a.device,
                          seed=a.seed)
    print(f"volume embeddings {r['volume_embeddings']['shape']}, text embeddings "
          f"{r['text_embeddings']['shape']}; {Path(a.out) / 'embeddings.json'}")
    return 0


def _add_downstream_parsers(sub) -> None:
    def common(name: str, helptext: str, split: str | None = "test", train: bool = False,
               epochs: int | None = None):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("model", help="pre-trained model folder (save_pretrained), or 'none' for "
                                     "no pre-training (with --config)")
        q.add_argument("--manifest", required=True)
        q.add_argument("--out", required=True, help="output folder (metrics JSON and files)")
        q.add_argument("--split", default=split,
                       help="evaluation split" if split else "only this split (default: all)")
        if train:
            q.add_argument("--train-split", default="train")
        if epochs is not None:
            q.add_argument("--epochs", type=int, default=epochs)
            q.add_argument("--lr", type=float, default=1e-3)
        q.add_argument("--config", default=None,
                       help="experiment YAML for MODEL 'none' (architecture, data, text model)")
        q.add_argument("--batch-size", type=int, default=4)
        q.add_argument("--cache-dir", default=None, help="preprocessed-volume cache folder")
        q.add_argument("--device", default=None)
        q.add_argument("--seed", type=int, default=0)
        return q

    z = common("zeroshot", "zero-shot abnormality classification with text prompts")
    z.add_argument("--prompts", default=None,
                   help="prompt YAML (default: built-in = configs/zeroshot-prompts.yaml)")
    z.add_argument("--modality", default=None, help="use one modality (default: mean of all)")
    z.set_defaults(func=_cmd_zeroshot)

    common("retrieve", "report-to-volume / volume-to-report retrieval (Recall@K)"
           ).set_defaults(func=_cmd_retrieve)

    sg = common("segment", "lesion segmentation: SwinUNETR decoder on the pre-trained encoder",
                train=True, epochs=20)
    sg.add_argument("--modality", default=None, help="input modality (default: the first)")
    sg.add_argument("--no-masks", action="store_true", help="do not write predicted masks")
    sg.set_defaults(func=_cmd_segment)

    common("generate-report", "report generation: Transformer decoder over visual tokens",
           train=True, epochs=20).set_defaults(func=_cmd_generate_report)

    pb = common("probe", "classification by linear probe or full fine-tuning", train=True,
                epochs=5)
    pb.add_argument("--mode", choices=["linear", "finetune"], default="linear")
    pb.set_defaults(func=_cmd_probe)

    common("embed", "export volume and report embeddings (.npy + CSV index)",
           split=None).set_defaults(func=_cmd_embed)


def build_parser() -> argparse.ArgumentParser:
    from medmap import __version__

    p = argparse.ArgumentParser(prog="medmap", description=__doc__)
    p.add_argument("--version", action="version", version=f"medmap {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="manifests, validation, simulator, importers")
    dsub = data.add_subparsers(dest="data_command", required=True)

    v = dsub.add_parser("validate", help="report every problem in a manifest, one line each")
    v.add_argument("manifest")
    v.add_argument("--no-files", action="store_true", help="check the schema only")
    v.set_defaults(func=_cmd_validate)

    s = dsub.add_parser("simulate", help="write the MedMoM-Sim benchmark")
    s.add_argument("--out", required=True)
    s.add_argument("--cases", type=int, default=60, help="cases per organ")
    s.add_argument("--size", type=int, default=64, help="volume side in voxels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--organs", nargs="+", default=["liver", "brain"])
    s.add_argument("--workers", type=int, default=None)
    s.set_defaults(func=_cmd_simulate)

    lld = dsub.add_parser("import-lld-mmri", help="LLD-MMRI layout to a manifest")
    lld.add_argument("root", help="the release folder (images/, labels/, classification_dataset/),"
                                  " the test archive's folder, or classification_dataset/")
    lld.add_argument("--out", default="cases.jsonl")
    lld.add_argument("--labels", default=None, help="labels file (default: found under ROOT)")
    lld.add_argument("--fold", type=int, default=None)
    lld.add_argument("--full-volumes", action="store_true",
                     help="whole volumes (images/ + labels/Annotation.json) instead of the "
                          "pre-cropped ROIs; the 3D lesion boxes become masks")
    lld.add_argument("--mask-dir", default=None,
                     help="where --full-volumes writes the lesion masks (default: OUT's name + "
                          "'_masks')")
    lld.set_defaults(func=_cmd_import_lld)

    rg = dsub.add_parser("import-radgenome", help="RadGenome-Brain MRI to a manifest")
    rg.add_argument("root")
    rg.add_argument("--out", default="cases.jsonl")
    rg.add_argument("--subsets", nargs="+", default=None)
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
        t.add_argument("--run-dir", default=f"runs/{name}")
        t.add_argument("--resume", action="store_true", help="continue from RUN_DIR's last.ckpt")
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
    e.add_argument("--split", default="test")
    e.add_argument("--out", default=None, help="default: RUN/eval-SPLIT")
    e.add_argument("--n-cam-cases", type=int, default=2)
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--n-boot", type=int, default=1000)
    e.add_argument("--no-localise", action="store_true")
    e.add_argument("--device", default=None)
    e.add_argument("--cache-dir", default=None)
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="predict new cases (no report needed)")
    pr.add_argument("model", help="a model folder or run folder")
    pr.add_argument("input", help="a manifest, a case folder or a single volume")
    pr.add_argument("--out", default="preds.csv")
    pr.add_argument("--cam", default=None, help="write CAM NIfTIs in the input space here")
    pr.add_argument("--modality", default=None, help="modality of a single-volume input")
    pr.add_argument("--roi", default=None, metavar="FILE",
                    help="organ mask of a single-volume / case-folder input, for models trained "
                         "with preprocess.roi_mask")
    pr.add_argument("--device", default=None)
    pr.set_defaults(func=_cmd_predict)

    ab = sub.add_parser("ablation", help="Table 2 rows + a global-CLIP baseline over seeds")
    ab.add_argument("--config", default=None)
    ab.add_argument("--out", default="runs/ablation")
    ab.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ab.add_argument("--rows", nargs="+", default=["baseline", "+MAVLP", "+CCT", "+CSA",
                                                   "global-CLIP"])
    ab.add_argument("--split", default="test")
    ab.add_argument("overrides", nargs="*", help="config overrides, e.g. finetune.epochs=5")
    ab.set_defaults(func=_cmd_ablation)

    d = sub.add_parser("demo", help="run the end-to-end demo on the embedded benchmark")
    d.add_argument("--out", default="medmap-demo")
    d.add_argument("--full", action="store_true",
                   help="larger, slower setting: 64^3, Swin experts, 350 + 200 cases, 60 epochs")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    _add_downstream_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medmap`` console command."""
    args = build_parser().parse_args(argv)
    from medmap.config import ConfigError
    from medmap.data.manifest import ManifestError

    try:
        return int(args.func(args) or 0)
    except (ManifestError, FileNotFoundError, ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
