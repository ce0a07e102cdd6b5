"""``medmap ablation``: the paper's Table 2 rows and a Table 1-style CLIP baseline, over seeds.

Rows (all fine-tuned with the same data, schedule and seed):

* ``baseline``: modality experts (``model.encoder``) from random init, no conv stream / CCT / CSA;
* ``+MAVLP``: experts initialised by modality-aware pre-training;
* ``+CCT``: plus the conv stream and the Cross-Cognition Transformer;
* ``+CSA``: plus the text guidance (full MedMAP);
* ``global-CLIP``: one shared, modality-agnostic encoder pre-trained contrastively, then the full
  MedMAP head (what modality-aware experts are compared against).

Example:
    >>> from medmap.ablation import run_ablation
    >>> table = run_ablation(cfg, "runs/ablation", seeds=(0, 1, 2))   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmap.train.config import ExperimentConfig

ROWS: dict[str, dict[str, Any]] = {
    "baseline": {"use_cct": False, "use_csa": False, "pretrained": None},
    "+MAVLP": {"use_cct": False, "use_csa": False, "pretrained": "experts"},
    "+CCT": {"use_cct": True, "use_csa": False, "pretrained": "experts"},
    "+CSA": {"use_cct": True, "use_csa": True, "pretrained": "experts"},
    "global-CLIP": {"use_cct": True, "use_csa": True, "pretrained": "shared"},
}


def _variant(cfg: ExperimentConfig, seed: int, **model_kw: Any) -> ExperimentConfig:
    c = copy.deepcopy(cfg)
    c.pretrain.seed = c.finetune.seed = seed
    c.pretrain.progress = c.finetune.progress = False
    for k, v in model_kw.items():
        setattr(c.model, k, v)
    return c


def run_ablation(cfg: ExperimentConfig, out_dir: str | Path, seeds: Sequence[int] = (0, 1, 2),
                 rows: Sequence[str] = tuple(ROWS), split: str = "test") -> dict[str, Any]:
    """Run every row for every seed; writes ``ablation.json`` and ``ablation.md``."""
    from medmap.eval.evaluate import evaluate
    from medmap.train.medmap import finetune, pretrain

    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; choose from {list(ROWS)}")
    out = Path(out_dir)
    results: dict[str, list[dict[str, float]]] = {r: [] for r in rows}
    for seed in seeds:
        pre: dict[str, Path] = {}
        for r in rows:
            spec = ROWS[r]
            init = None
            if spec["pretrained"] is not None:
                kind = spec["pretrained"]
                if kind not in pre:
                    pc = _variant(cfg, seed, shared_encoder=kind == "shared")
                    pre[kind] = pretrain(pc, out / f"seed{seed}" / f"pretrain-{kind}")
                init = pre[kind]
            fc = _variant(cfg, seed, use_cct=spec["use_cct"], use_csa=spec["use_csa"],
                          shared_encoder=spec["pretrained"] == "shared")
            run = out / f"seed{seed}" / r.replace("+", "plus-")
            finetune(fc, run, init=init)
            # the volume cache is shared: every row and seed evaluates the same test cases
            m = evaluate(run, cfg.data.manifest, split=split, n_boot=200, localise=False,
                         n_cam_cases=0, cache_dir=cfg.data.cache_dir)["metrics"]
            results[r].append({"seed": seed, "accuracy": m["accuracy"], "auc": m["auc"],
                               "balanced_accuracy": m["balanced_accuracy"]})
            print(f"seed {seed} {r:12s} acc {m['accuracy']:.3f} auc {m['auc']}", flush=True)
    table = {r: summarise(v) for r, v in results.items()}
    doc = {"organ": cfg.data.organ, "split": split, "seeds": list(seeds), "rows": table,
           "runs": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    (out / "ablation.md").write_text(to_markdown(doc), encoding="utf-8")
    print(to_markdown(doc))
    return doc


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    """Mean and sample standard deviation of each metric over seeds."""
    out: dict[str, float] = {}
    for k in ("accuracy", "auc", "balanced_accuracy"):
        vals = [r[k] for r in runs if r[k] is not None]
        out[f"{k}_mean"] = statistics.fmean(vals) if vals else float("nan")
        out[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [f"Ablation on MedMoM {doc['organ']} ({doc['split']} split), seeds {doc['seeds']}",
             "", "| row | accuracy | macro AUC | balanced accuracy |", "|---|---|---|---|"]
    for r, s in doc["rows"].items():
        lines.append(f"| {r} | {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f} | "
                     f"{s['auc_mean']:.3f} ± {s['auc_std']:.3f} | "
                     f"{s['balanced_accuracy_mean']:.3f} ± {s['balanced_accuracy_std']:.3f} |")
    return "\n".join(lines) + "\n"
