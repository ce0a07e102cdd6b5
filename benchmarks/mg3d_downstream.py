"""Downstream comparison of pre-training methods on MedMoM-Sim: none vs MedMAP vs MG-3D.

Simulates the benchmark (demo scale: 32^3), pre-trains MedMAP's modality-aware contrastive
experts (``medmap.train.medmap.pretrain``) and, when ``medmap.train.mg3d.pretrain_mg3d`` is
available, MG-3D with the same data, architecture and optimiser settings, then runs
:func:`medmap.downstream.compare.compare_pretraining` (zero-shot AUC, Recall@K, segmentation
Dice, BLEU) for "no pre-training", MedMAP and MG-3D on the same splits.

    python benchmarks/mg3d_downstream.py --out medmap-downstream            # demo scale
    python benchmarks/mg3d_downstream.py --out /tmp/ds-smoke --smoke         # minutes, tiny

Writes ``OUT/compare/comparison.json`` and ``OUT/compare/comparison.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_config(args: argparse.Namespace, manifest: Path):
    from medmap.config import load_config
    from medmap.train.config import ExperimentConfig

    cfg = load_config(ExperimentConfig, REPO / "configs" / f"demo-{args.organ}.yaml")
    out = Path(args.out)
    cfg.data.manifest = str(manifest)
    cfg.data.organ = args.organ
    cfg.data.cache_dir = str(out / "cache" / "volumes")
    cfg.text.cache_dir = str(out / "cache" / "text")
    cfg.data.preprocess.size = (args.size,) * 3
    cfg.pretrain.epochs = args.pretrain_epochs
    cfg.pretrain.progress = False
    if args.modalities:
        cfg.data.modalities = list(args.modalities)
    if args.smoke:
        from medmap.models.medmap import MedMAPConfig

        cfg.model = MedMAPConfig.tiny([], [], text_dim=MedMAPConfig().text_dim)  # derived: default
        cfg.data.modalities = ["T2WI", "C+A"] if args.organ == "liver" else ["T1WI", "T1C"]
        cfg.pretrain.batch_size = 4
        cfg.pretrain.lr = 1e-3
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="medmap-downstream")
    p.add_argument("--organ", default="liver", choices=["liver", "brain"])
    p.add_argument("--cases", type=int, default=None, help="cases (default 140, smoke 10)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default 3, smoke 1")
    p.add_argument("--seg-epochs", type=int, default=None, help="default 10, smoke 1")
    p.add_argument("--gen-epochs", type=int, default=None, help="default 20, smoke 1")
    p.add_argument("--modalities", nargs="+", default=None,
                   help="MRI sequences to use (default: all of the organ's)")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny models, 10 cases, 1 epoch each")
    args = p.parse_args(argv)
    small = args.smoke
    args.cases = args.cases or (10 if small else 140)
    args.pretrain_epochs = args.pretrain_epochs or (1 if small else 3)
    args.seg_epochs = args.seg_epochs or (1 if small else 10)
    args.gen_epochs = args.gen_epochs or (1 if small else 20)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from medmap.data.sim import simulate
    from medmap.downstream.compare import compare_pretraining
    from medmap.train.medmap import pretrain

    out = Path(args.out)
    t0 = time.time()
    data = out / "data"
    if not (data / "manifest.jsonl").exists():
        simulate(data, cases={args.organ: args.cases}, size=args.size, seed=args.seed,
                 organs=[args.organ])
    manifest = data / "manifest.jsonl"
    print(f"data: {manifest} ({time.time() - t0:.0f} s)", flush=True)
    cfg = build_config(args, manifest)
    models: dict[str, Path | None] = {"no pre-training": None}
    models["MedMAP"] = pretrain(cfg, out / "runs" / "medmap-pretrain")
    print(f"MedMAP pre-trained: {models['MedMAP']} ({time.time() - t0:.0f} s)", flush=True)
    try:
        from medmap.train.mg3d import pretrain_mg3d
    except ImportError as e:
        print(f"MG-3D skipped: medmap.train.mg3d.pretrain_mg3d is not importable ({e})")
    else:
        models["MG-3D"] = pretrain_mg3d(cfg, out / "runs" / "mg3d-pretrain")
        print(f"MG-3D pre-trained: {models['MG-3D']} ({time.time() - t0:.0f} s)", flush=True)
    doc = compare_pretraining(models, manifest, out / "compare", split=args.split,
                              seg_epochs=args.seg_epochs, gen_epochs=args.gen_epochs,
                              seed=args.seed, experiment=cfg,
                              cache_dir=cfg.data.cache_dir)
    print((out / "compare" / "comparison.md").read_text())
    print(f"total {time.time() - t0:.0f} s; {out / 'compare' / 'comparison.json'}")
    return 0 if doc["summary"] else 1


if __name__ == "__main__":
    sys.exit(main())
