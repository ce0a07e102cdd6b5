"""Downstream comparison of pre-training methods on MedMoM-Sim, with confidence intervals.

Simulates the benchmark (the demo's setting: lesion-region crops at 32^3, small CNN experts),
pre-trains with the same data, architecture and optimiser settings

* MedMAP, the paper's objective (per-sequence InfoNCE only: ``case_alignment=false``);
* MedMAP with case-level alignment (the case embedding against the global impression);
* MG-3D (MIM, MLM, SFR, CML, SSM, DFA + our ITC; per-sequence reports and global impressions);
* MG-3D without ITC (the paper's loss terms),

and runs :func:`medmap.downstream.compare.compare_pretraining` for them and "no pre-training":
zero-shot macro AUC and accuracy, CT-VocabFine AUC, per-sequence and case-level Recall@5 beside
chance, linear-probe accuracy, lesion segmentation Dice (on any expert's multi-scale feature
maps), report generation BLEU-4, ROUGE-L and clinical accuracy beside the extractor's ceiling;
every column with its 95% bootstrap CI (``--swin``: Swin experts instead, much slower).

    python benchmarks/mg3d_downstream.py --out /tmp/ds --cases 500        # the comparison
    python benchmarks/mg3d_downstream.py --out /tmp/ds-smoke --smoke       # minutes, tiny
    python benchmarks/mg3d_downstream.py --out /tmp/ds --cases 500 --resume  # after a stop
    python benchmarks/mg3d_downstream.py --merge /tmp/ds /tmp/ds-s1 --doc docs/results/x  # seeds

Writes ``OUT/compare/comparison.json`` and ``OUT/compare/comparison.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_config(args: argparse.Namespace, manifest: Path):
    from medmap.config import load_config
    from medmap.models.encoders import SwinConfig
    from medmap.train.config import ExperimentConfig

    cfg = load_config(ExperimentConfig, REPO / "configs" / "demo.yaml",
                      [f"data.organ={args.organ}"])
    out = Path(args.out)
    cfg.data.manifest = str(manifest)
    cfg.data.cache_dir = str(out / "cache" / "volumes")
    cfg.text.cache_dir = str(out / "cache" / "text")
    cfg.pretrain.progress = False
    if args.pretrain_epochs:
        cfg.pretrain.epochs = args.pretrain_epochs
    if args.swin:
        cfg.model.encoder = SwinConfig(feature_size=12, window_size=4, out_stage=3)
    if args.smoke:
        from medmap.models.medmap import MedMAPConfig

        cfg.model = MedMAPConfig.tiny([], [], text_dim=MedMAPConfig().text_dim)  # derived: default
        cfg.data.modalities = ["T2WI", "C+A"] if args.organ == "liver" else ["T1WI", "T1C"]
        cfg.pretrain.batch_size, cfg.pretrain.lr, cfg.pretrain.early_stop_patience = 4, 1e-3, 0
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="medmap-downstream", help="output folder")
    p.add_argument("--organ", default="liver", choices=["liver", "brain"])
    p.add_argument("--cases", type=int, default=None, help="cases (default 500, smoke 10)")
    p.add_argument("--sim-size", type=int, default=48, help="simulated volume side")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="at most this many epochs (default: configs/demo.yaml's, with its "
                        "early stopping; smoke 1)")
    p.add_argument("--gen-epochs", type=int, default=None, help="default 20, smoke 1")
    p.add_argument("--seg-epochs", type=int, default=None, help="default 10, smoke 1")
    p.add_argument("--methods", nargs="+", default=None,
                   help="subset of: none MedMAP MedMAP+case MG-3D MG-3D-noITC")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--swin", action="store_true", help="Swin experts (fs12): segmentation too")
    p.add_argument("--smoke", action="store_true", help="tiny models, 10 cases, 1 epoch each")
    p.add_argument("--merge", nargs="+", metavar="OUT",
                   help="only merge finished runs (one OUT per seed) into --doc")
    p.add_argument("--doc", default=None,
                   help="with --merge: write DOC.json and DOC.md (default OUT/merged)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in OUT: finished pre-trainings and tasks "
                        "are reused, an unfinished pre-training resumes from its last epoch")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.doc or Path(args.out) / "merged"))
    small = args.smoke
    args.cases = args.cases or (10 if small else 500)
    args.pretrain_epochs = args.pretrain_epochs or (1 if small else None)
    args.seg_epochs = args.seg_epochs or (1 if small else 10)
    args.gen_epochs = args.gen_epochs or (1 if small else 20)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from medmap.data.sim import SimConfig, simulate
    from medmap.downstream.compare import compare_pretraining
    from medmap.train.medmap import pretrain
    from medmap.train.mg3d import pretrain_mg3d

    out = Path(args.out)
    t0 = time.time()
    data = out / "data"
    if not (data / "manifest.jsonl").exists():
        simulate(data, cases={args.organ: args.cases}, size=args.sim_size if not small else 32,
                 seed=args.seed, organs=[args.organ],
                 config=SimConfig(lesion_radius_mm=(12.0, 28.0),
                                  split_fractions=(0.6, 0.1, 0.3)))
    manifest = data / "manifest.jsonl"
    print(f"data: {manifest} ({time.time() - t0:.0f} s)", flush=True)
    cfg = build_config(args, manifest)
    methods = args.methods or ["none", "MedMAP", "MedMAP+case", "MG-3D", "MG-3D-noITC"]
    models: dict[str, Path | None] = {}
    for name in methods:
        c = copy.deepcopy(cfg)
        run = out / "runs" / name
        if name == "none":
            models["no pre-training"] = None
            continue
        if args.resume and (run / "metrics.json").is_file():    # written when a stage ends
            models[name] = run / "model"
            print(f"{name}: reusing {models[name]}", flush=True)
            continue
        again = {"resume": True} if args.resume and (run / "checkpoints" / "last.ckpt").is_file() \
            else {"overwrite": True}
        if name.startswith("MedMAP"):
            c.model.losses.case_alignment = name == "MedMAP+case"
            models[name] = pretrain(c, run, **again)
        elif name.startswith("MG-3D"):
            c.mg3d.losses.itc = name == "MG-3D"
            models[name] = pretrain_mg3d(c, run, **again)
        else:
            raise SystemExit(f"unknown method {name!r}")
        print(f"{name} pre-trained: {models[name]} ({time.time() - t0:.0f} s)", flush=True)
    tasks = ("zeroshot", "vocabfine", "retrieval", "probe", "segment", "report_gen")
    doc = compare_pretraining(models, manifest, out / "compare", split=args.split, tasks=tasks,
                              seg_epochs=args.seg_epochs, gen_epochs=args.gen_epochs,
                              seed=args.seed, experiment=cfg, cache_dir=cfg.data.cache_dir,
                              resume=args.resume)
    print((out / "compare" / "comparison.md").read_text())
    print(f"total {time.time() - t0:.0f} s; {out / 'compare' / 'comparison.json'}")
    return 0 if doc["summary"] else 1


def merge(outs: list[str], doc: Path) -> int:
    """Merge the comparisons of several seeds' runs into ``doc``.json / ``doc``.md."""
    import json

    from medmap.downstream.common import write_json
    from medmap.downstream.compare import merge_seeds, seeds_markdown

    docs = []
    for o in outs:
        f = Path(o) / "compare" / "comparison.json"
        try:
            docs.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            print(f"error: --merge {o}: cannot read {f} ({type(e).__name__}); give the OUT "
                  f"folder of a finished run (python benchmarks/mg3d_downstream.py --out {o} "
                  f"... --resume finishes it)", file=sys.stderr)
            return 2
    merged = merge_seeds(docs)
    write_json(merged, doc.with_suffix(".json"))
    text = seeds_markdown(merged, "Downstream comparison of pre-training methods, 500 liver cases")
    doc.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
