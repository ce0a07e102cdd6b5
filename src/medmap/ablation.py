"""``medmap ablation``: the paper's Table 2 rows and two controls, over seeds.

Rows, as the paper defines them (all fine-tuned with the same data, schedule and seed):

* ``baseline``: experts from random init, Transformer stream only, no text;
* ``+MAVLP``: the same with modality-aware pre-trained experts;
* ``+CCT``: plus the Cross-Cognition Transformer between the Transformer stream and the
  projected class-knowledge text (no convolutional stream);
* ``+CSA``: the Cross-modal Semantic Aggregation module -- convolutional stream plus the
  text-guided Transformer stream -- fused by CCT: full MedMAP.

Controls and baselines:

* ``radiomics``: the classical baseline on the same split (IBSI radiomics of the lesion per
  sequence + logistic regression, :mod:`medmap.baselines.radiomics`); its features are
  computed once and the model is fit per seed (the seed sets its CV folds);
* ``report-assisted``: full MedMAP with the paper's protocol, each case's own reports guiding
  the CSA module (``csa_text="report"``) in training *and* at test time. Reports state the
  diagnosis, so this row reads the label: shown beside the report-free default, never
  instead of it;
* ``language-removed``: full MedMAP with every text embedding (class prompts and KL targets)
  replaced by fixed random vectors of the same norm: the same capacity, no language;
* ``global-CLIP``: one shared, modality-agnostic encoder pre-trained contrastively, then the
  full MedMAP head.

Besides mean +- sd per row, the table gives the paired difference "full MedMAP - language
removed" (same seed, same test cases): its mean over seeds with a t interval over seeds, and a
paired bootstrap CI over the test cases (pooled over seeds).

Example:
    >>> from medmap.ablation import run_ablation
    >>> table = run_ablation(cfg, "runs/ablation", seeds=(0, 1, 2))   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmap.config import UserError
from medmap.train.config import ExperimentConfig

ROWS: dict[str, dict[str, Any]] = {
    "baseline": {"model": {"use_conv": False, "use_cct": False, "csa_text": "none"},
                 "pretrained": None},
    "+MAVLP": {"model": {"use_conv": False, "use_cct": False, "csa_text": "none"},
               "pretrained": "experts"},
    "+CCT": {"model": {"use_conv": False, "use_cct": True, "csa_text": "none"},
             "pretrained": "experts"},
    "+CSA": {"model": {"use_conv": True, "use_cct": True, "csa_text": "knowledge"},
             "pretrained": "experts"},
    "language-removed": {"model": {"use_conv": True, "use_cct": True, "csa_text": "knowledge",
                                   "language": "random"}, "pretrained": "experts"},
    "global-CLIP": {"model": {"use_conv": True, "use_cct": True, "csa_text": "knowledge"},
                    "pretrained": "shared"},
    "report-assisted": {"model": {"use_conv": True, "use_cct": True, "csa_text": "report"},
                        "pretrained": "experts"},
    "radiomics": {"baseline": "radiomics"},
}
CAVEATS = {"report-assisted": "reads each test case's own reports (they state the diagnosis): "
                              "label leakage, not a report-free result"}
FULL, CONTROL = "+CSA", "language-removed"
METRICS = ("accuracy", "auc", "balanced_accuracy")


def _variant(cfg: ExperimentConfig, seed: int, **model_kw: Any) -> ExperimentConfig:
    c = copy.deepcopy(cfg)
    c.pretrain.seed = c.finetune.seed = seed
    c.pretrain.progress = c.finetune.progress = False
    for k, v in model_kw.items():
        setattr(c.model, k, v)
    return c


def run_ablation(cfg: ExperimentConfig, out_dir: str | Path, seeds: Sequence[int] = (0, 1, 2),
                 rows: Sequence[str] = tuple(ROWS), split: str = "test",
                 n_boot: int = 2000) -> dict[str, Any]:
    """Run every row for every seed; writes ``ablation.json`` (strict JSON: undefined values
    are null) and ``ablation.md``; returns the document. Each finished (seed, row) is saved
    as it ends (``seedN/ROW.result.json``), so re-running the same command with the same
    settings after an interruption skips the rows already done."""
    from medmap.eval.evaluate import evaluate
    from medmap.train.medmap import finetune, pretrain

    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise UserError(f"unknown ablation rows {unknown}; choose from {list(ROWS)}")
    out = Path(out_dir)
    results: dict[str, list[dict[str, Any]]] = {r: [] for r in rows}
    features = None
    fingerprint = _fingerprint(cfg, split)
    for seed in seeds:
        pre: dict[str, Path] = {}
        for r in rows:
            spec = ROWS[r]
            done = _finished_row(out, seed, r, fingerprint)
            if done is not None:            # an interrupted ablation resumes row by row
                results[r].append(done)
                print(f"seed {seed} {r:16s} acc {_fmt(done['accuracy'])} "
                      f"auc {_fmt(done['auc'])} (already done)", flush=True)
                continue
            if spec.get("baseline") == "radiomics":
                res, features = _radiomics_row(cfg, out / f"seed{seed}" / "radiomics", split,
                                               seed, features)
                results[r].append(res)
                _save_row(out, seed, r, fingerprint, res)
                print(f"seed {seed} {r:16s} acc {_fmt(res['accuracy'])} "
                      f"auc {_fmt(res['auc'])}", flush=True)
                continue
            init = None
            if spec["pretrained"] is not None:
                kind = spec["pretrained"]
                if kind not in pre:
                    pc = _variant(cfg, seed, shared_encoder=kind == "shared")
                    pre[kind] = pretrain(pc, out / f"seed{seed}" / f"pretrain-{kind}",
                                         overwrite=True)
                init = pre[kind]
            fc = _variant(cfg, seed, **spec["model"], shared_encoder=spec["pretrained"] == "shared")
            run = out / f"seed{seed}" / r.replace("+", "plus-")
            finetune(fc, run, init=init, overwrite=True)
            # the volume cache is shared: every row and seed evaluates the same test cases
            res = evaluate(run, cfg.data.manifest, split=split, n_boot=200, localise=False,
                           n_cam_cases=0, cache_dir=cfg.data.cache_dir)
            m = res["metrics"] or {}
            classes = res["classes"]
            correct = {c["case_id"]: int(c["predicted"] == c["label"]) for c in res["cases"]
                       if c["label"]}
            results[r].append({"seed": seed, **{k: m.get(k) for k in METRICS},
                               "n": m.get("n"), "correct": correct, "classes": classes})
            _save_row(out, seed, r, fingerprint, results[r][-1])
            print(f"seed {seed} {r:16s} acc {_fmt(m.get('accuracy'))} auc {_fmt(m.get('auc'))}",
                  flush=True)
    table = {r: summarise(v) for r, v in results.items()}
    doc: dict[str, Any] = {"organ": cfg.data.organ, "split": split, "seeds": list(seeds),
                           "rows": table, "caveats": {r: CAVEATS[r] for r in rows if r in CAVEATS},
                           "runs": {r: [{k: v for k, v in x.items() if k != "correct"}
                                        for x in runs] for r, runs in results.items()}}
    if FULL in results and CONTROL in results:
        doc["language_effect"] = paired_difference(results[FULL], results[CONTROL], n_boot)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(_finite(doc), indent=2, allow_nan=False),
                                       encoding="utf-8")
    (out / "ablation.md").write_text(to_markdown(doc), encoding="utf-8")
    print(to_markdown(doc))
    return doc


def _fingerprint(cfg: ExperimentConfig, split: str) -> str:
    """A hash of everything a row's result depends on besides the row and the seed."""
    import dataclasses
    import hashlib

    blob = json.dumps({"cfg": dataclasses.asdict(cfg), "split": split}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _row_file(out: Path, seed: int, row: str) -> Path:
    return out / f"seed{seed}" / f"{row.replace('+', 'plus-')}.result.json"


def _save_row(out: Path, seed: int, row: str, fingerprint: str, res: dict[str, Any]) -> None:
    path = _row_file(out, seed, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_finite({"fingerprint": fingerprint, "result": res})),
                   encoding="utf-8")
    tmp.replace(path)                      # atomic: a kill never leaves half a result


def _finished_row(out: Path, seed: int, row: str, fingerprint: str) -> dict[str, Any] | None:
    """The saved result of (seed, row) from an earlier run with the same settings, else None."""
    path = _row_file(out, seed, row)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc.get("result") if doc.get("fingerprint") == fingerprint else None


def _radiomics_row(cfg: ExperimentConfig, out: Path, split: str, seed: int, features):
    """The radiomics baseline for one seed; the features are extracted on the first call and
    passed back for the next seeds."""
    from medmap.baselines.radiomics import (RadiomicsConfig, extract_features, run_radiomics)
    from medmap.data.manifest import Manifest
    from medmap.data.vocab import get_organ

    rcfg = RadiomicsConfig(mask_key=cfg.model.mask_key)
    if features is None:
        manifest = Manifest.load(cfg.data.manifest).select(organ=cfg.data.organ)
        cases = [c for c in manifest.resolved() if c.label is not None
                 and c.split in ("train", "val", split)]
        present = {m for c in cases for m in c.modalities}
        mods = [m for m in get_organ(cfg.data.organ).modalities if m in present]
        X, names = extract_features(cases, mods, rcfg)
        features = (X, names, cases)
    doc = run_radiomics(cfg.data.manifest, cfg.data.organ, out, rcfg, split=split, n_boot=200,
                        seed=seed, features=features)
    m = doc["metrics"]
    correct = {c["case_id"]: int(c["predicted"] == c["label"]) for c in doc["cases"]}
    return ({"seed": seed, **{k: m.get(k) for k in METRICS}, "n": m.get("n"),
             "correct": correct, "classes": m["classes"]}, features)


def summarise(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean and sample standard deviation of each metric over seeds (None when undefined)."""
    out: dict[str, float | None] = {}
    for k in METRICS:
        vals = [r[k] for r in runs if r.get(k) is not None and math.isfinite(r[k])]
        out[f"{k}_mean"] = statistics.fmean(vals) if vals else None
        out[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
    return out


def paired_difference(full: list[dict[str, Any]], control: list[dict[str, Any]],
                      n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Full minus control, paired by seed: accuracy and AUC differences per seed, their mean
    with a 95% t interval over seeds, and a 95% paired bootstrap CI of the accuracy difference
    over test cases (resampling the same cases for both rows within each seed)."""
    from scipy import stats

    by_seed = {r["seed"]: r for r in control}
    pairs = [(a, by_seed[a["seed"]]) for a in full if a["seed"] in by_seed]
    out: dict[str, Any] = {"rows": [FULL, CONTROL], "seeds": [a["seed"] for a, _ in pairs]}
    for k in ("accuracy", "auc"):
        d = [a[k] - b[k] for a, b in pairs if a.get(k) is not None and b.get(k) is not None]
        out[f"{k}_diff_per_seed"] = d
        out[f"{k}_diff_mean"] = float(np.mean(d)) if d else None
        if len(d) > 1:
            half = float(stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d)))
            out[f"{k}_diff_t95"] = [out[f"{k}_diff_mean"] - half, out[f"{k}_diff_mean"] + half]
    rng = np.random.default_rng(seed)
    seeds_d = []
    for a, b in pairs:
        ids = sorted(set(a["correct"]) & set(b["correct"]))
        if ids:
            seeds_d.append(np.array([a["correct"][i] - b["correct"][i] for i in ids], float))
    if seeds_d:
        boots = np.mean([[d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)]
                         for d in seeds_d], axis=0)                    # (n_boot,) seed-averaged
        out["accuracy_diff_bootstrap95"] = [float(np.percentile(boots, 2.5)),
                                            float(np.percentile(boots, 97.5))]
        out["n_cases_per_seed"] = [len(d) for d in seeds_d]
    return out


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{nd}f}"


def to_markdown(doc: dict[str, Any]) -> str:
    """The ablation table (mean ± sd over seeds) and the language effect, as Markdown."""
    lines = [f"Ablation on MedMoM {doc['organ']} ({doc['split']} split), seeds {doc['seeds']}",
             "", "| row | accuracy | macro AUC | balanced accuracy |", "|---|---|---|---|"]
    one = len(doc["seeds"]) == 1          # one seed: no spread to show
    for r, s in doc["rows"].items():
        lines.append("| " + r + (" (†)" if r in CAVEATS else "") + " | " + " | ".join(
            _fmt(s[f"{k}_mean"]) + ("" if one else f" ± {_fmt(s[f'{k}_std'])}")
            for k in METRICS) + " |")
    for r in doc["rows"]:
        if r in CAVEATS:
            lines += ["", f"(†) {r}: {CAVEATS[r]}."]
    eff = doc.get("language_effect")
    if eff:
        t_acc, t_auc = eff.get("accuracy_diff_t95"), eff.get("auc_diff_t95")
        boot = eff.get("accuracy_diff_bootstrap95")
        lines += ["", f"Paired difference {FULL} (full MedMAP) - {CONTROL}, same seeds:",
                  f"- accuracy {_fmt(eff.get('accuracy_diff_mean'))}"
                  + (f", 95% t interval over seeds [{_fmt(t_acc[0])}, {_fmt(t_acc[1])}]"
                     if t_acc else "")
                  + (f", 95% paired bootstrap over test cases [{_fmt(boot[0])}, {_fmt(boot[1])}]"
                     if boot else ""),
                  f"- macro AUC {_fmt(eff.get('auc_diff_mean'))}"
                  + (f", 95% t interval over seeds [{_fmt(t_auc[0])}, {_fmt(t_auc[1])}]"
                     if t_auc else "")]
    return "\n".join(lines) + "\n"
