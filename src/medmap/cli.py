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
    from medmap.data.sources.lld_mmri import import_lld_mmri

    m = import_lld_mmri(a.root, labels_file=a.labels, fold=a.fold)
    m.save(a.out)
    print(f"wrote {len(m)} cases to {a.out}")
    return 0


def _cmd_import_radgenome(a: argparse.Namespace) -> int:
    from medmap.data.sources.radgenome import import_radgenome

    m = import_radgenome(a.root, subsets=a.subsets, image_root=a.image_root)
    m.save(a.out)
    print(f"wrote {len(m)} cases to {a.out}")
    return 0


def _experiment(a: argparse.Namespace):
    from medmap.config import load_config
    from medmap.train.run import ExperimentConfig

    return load_config(ExperimentConfig, a.config, a.overrides)


def _cmd_pretrain(a: argparse.Namespace) -> int:
    from medmap.train.run import pretrain

    out = pretrain(_experiment(a), a.run_dir, resume=a.resume)
    print(f"pre-trained experts: {out}")
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    from medmap.train.run import finetune

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

    rows = predict(a.model, a.input, a.out, cam_dir=a.cam, modality=a.modality, device=a.device)
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
    lld.add_argument("root")
    lld.add_argument("--out", default="cases.jsonl")
    lld.add_argument("--labels", default=None, help="labels file (default: found under ROOT)")
    lld.add_argument("--fold", type=int, default=None)
    lld.set_defaults(func=_cmd_import_lld)

    rg = dsub.add_parser("import-radgenome", help="RadGenome-Brain MRI to a manifest")
    rg.add_argument("root")
    rg.add_argument("--out", default="cases.jsonl")
    rg.add_argument("--subsets", nargs="+", default=None)
    rg.add_argument("--image-root", default=None,
                    help="folder of the challenge images when not under ROOT")
    rg.set_defaults(func=_cmd_import_radgenome)

    for name, helptext in (("pretrain", "stage 1: modality-aware vision-language pre-training"),
                           ("finetune", "stage 2: fine-tune MedMAP (CSA + CCT) for detection")):
        t = sub.add_parser(name, help=helptext)
        t.add_argument("--config", default=None, help="YAML file (see configs/)")
        t.add_argument("--run-dir", default=f"runs/{name}")
        t.add_argument("--resume", action="store_true", help="continue from RUN_DIR's last.ckpt")
        if name == "finetune":
            t.add_argument("--init", default=None, help="pre-trained model folder (runs/pretrain/model)")
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
    d.add_argument("--full", action="store_true", help="larger, slower setting")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
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
