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

    d = sub.add_parser("demo", help="run the end-to-end demo on the embedded benchmark")
    d.add_argument("--out", default="medmap-demo")
    d.add_argument("--full", action="store_true", help="larger, slower setting")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medmap`` console command."""
    args = build_parser().parse_args(argv)
    from medmap.data.manifest import ManifestError

    try:
        return int(args.func(args) or 0)
    except (ManifestError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
