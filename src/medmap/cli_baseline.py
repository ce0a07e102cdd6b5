"""The ``medmap baseline`` commands: classical baselines on a manifest's split (a few lines over
:mod:`medmap.baselines`). :func:`add_baseline_parsers` adds them to
:func:`medmap.cli.build_parser`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_radiomics(a: argparse.Namespace) -> int:
    from medmap.baselines.radiomics import RadiomicsConfig, run_radiomics

    cfg = RadiomicsConfig(region=a.region, mask_key=a.mask, families=tuple(a.families))
    doc = run_radiomics(a.manifest, a.organ, a.out, cfg, split=a.split, n_boot=a.n_boot,
                        seed=a.seed, workers=a.workers, progress=True)
    m = doc["metrics"]
    ci = m["ci"]
    print(f"{a.organ} {a.split}: n={m['n']} radiomics ({doc['n_features']} IBSI features, "
          f"{a.region}, {doc['library']}) + logistic regression (C={doc['C']:g}): accuracy "
          f"{m['accuracy']:.3f} (95% CI {ci['accuracy'][0]:.3f}-{ci['accuracy'][1]:.3f}), macro "
          f"AUC {_f(m['auc'])} (95% CI {_f(ci['auc'][0])}-{_f(ci['auc'][1])}); "
          f"{Path(a.out) / 'radiomics.json'}")
    return 0


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def add_baseline_parsers(sub) -> None:
    """Add ``medmap baseline ...`` to the top-level sub-parsers ``sub``."""
    b = sub.add_parser("baseline", help="classical baselines on the same split and metrics "
                                        "(radiomics + logistic regression)")
    bsub = b.add_subparsers(dest="baseline_command", required=True)
    r = bsub.add_parser("radiomics", help="IBSI radiomics features (MIRP) of the lesion per "
                                          "sequence + a logistic regression, C by cross-"
                                          "validation on the training cases")
    r.add_argument("manifest", help="JSONL / CSV manifest with lesion masks")
    r.add_argument("--organ", default="liver", help="organ whose cases to use (default: liver)")
    r.add_argument("--out", default="runs/radiomics",
                   help="output folder: radiomics.json, features.csv (default: runs/radiomics)")
    r.add_argument("--split", default="test", help="split to score (default: test); the model "
                                                   "is fit on train + val")
    r.add_argument("--region", choices=("mask", "box"), default="mask",
                   help="features inside the lesion mask (default) or its bounding box only "
                        "(box-annotated data)")
    r.add_argument("--mask", default="lesion", help="manifest masks entry of the lesion "
                                                    "(default: lesion)")
    r.add_argument("--families", nargs="+", default=["statistics"],
                   help="MIRP feature families (default: statistics), e.g. statistics "
                        "intensity_histogram glcm")
    r.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples for the confidence intervals (default: 1000)")
    r.add_argument("--seed", type=int, default=0, help="seed of the CV folds and bootstrap")
    r.add_argument("--workers", type=int, default=None,
                   help="feature-extraction processes (default: one per CPU core)")
    r.set_defaults(func=_cmd_radiomics)
