"""Compare pre-training methods on the downstream tasks, on the same data and splits.

:func:`compare_pretraining` runs, for every named model (a pre-trained model folder, or None
for "no pre-training": a seeded random ``ModalityAwareCLIP`` with the architecture,
preprocessing and text model of the first named folder, or of ``experiment``):

* zero-shot classification (macro AUC over classes, multi-class accuracy) on ``split``;
* CT-VocabFine (the text side fine-tuned on ``vocabfine_n`` labelled ``train_split`` cases per
  class, then zero-shot AUC);
* report-to-volume retrieval (pair level: R@1/5/10/50, median rank; case level) on ``split``;
* a linear probe of the frozen case embeddings (accuracy with a bootstrap CI);
* lesion segmentation (SwinUNETR decoder fine-tuned on ``train_split``, Dice on ``split``);
* report generation (decoder trained on ``train_split``: BLEU-1..4, ROUGE-L and clinical
  accuracy, the diagnosis read from the generated report, beside the extractor's ceiling);

with the same seed, epochs and splits for all, and writes ``comparison.json`` (every task's full
result under ``results[name][task]``, a one-line ``summary`` per model) and ``comparison.md``
(one table). A task that cannot run for a model by design (a
:class:`~medmap.downstream.common.TaskNotApplicable`, e.g. segmentation of an encoder without
multi-scale feature maps)
is recorded as ``{"not_applicable": reason}`` ("n/a" in the table); any other error stops the
comparison -- a failure is never shown as "not applicable".

Example:
    >>> from medmap.downstream.compare import compare_pretraining
    >>> compare_pretraining({"none": None, "MedMAP": "runs/pretrain/model"},
    ...                     "sim/manifest.jsonl", "runs/compare")                  # doctest: +SKIP
"""

from __future__ import annotations

import json

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medmap.config import UserError
from medmap.data.manifest import Manifest
from medmap.downstream.common import TaskNotApplicable, safe_name, write_json
from medmap.downstream.vlm import LoadedVLM, load_vlm

__all__ = ["compare_pretraining", "TASKS", "summary_row", "markdown_table", "merge_seeds",
           "seeds_markdown"]

TASKS = ("zeroshot", "vocabfine", "retrieval", "probe", "segment", "report_gen")

_COLUMNS = [("zeroshot_auc", "zero-shot AUC"), ("zeroshot_ci", "95% CI"),
            ("zeroshot_accuracy", "zero-shot acc"), ("zeroshot_accuracy_ci", "95% CI"),
            ("chance_accuracy", "chance acc"),
            ("vocabfine_auc", "VocabFine AUC"), ("vocabfine_ci", "95% CI"),
            ("R@5", "R@5 per seq."), ("R@5_ci", "95% CI"), ("chance@5", "chance@5"),
            ("case_R@5", "case R@5"), ("case_R@5_ci", "95% CI"),
            ("case_chance@5", "chance@5"),
            ("probe_accuracy", "linear probe acc"), ("probe_ci", "95% CI"),
            ("dice", "Dice"), ("dice_ci", "95% CI"),
            ("BLEU-4", "BLEU-4"), ("rouge_l", "ROUGE-L"), ("rouge_l_ci", "95% CI"),
            ("clinical_accuracy", "clinical acc"), ("clinical_ci", "95% CI"),
            ("clinical_ceiling", "extractor ceiling")]


def summary_row(results: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers of one model's task results (report -> volume retrieval)."""
    row: dict[str, Any] = {k: None for k, _ in _COLUMNS}
    zs = results.get("zeroshot")
    if isinstance(zs, dict) and "auc" in zs:
        row["zeroshot_auc"], row["zeroshot_ci"] = zs["auc"], zs.get("ci")
        row["zeroshot_accuracy"] = zs.get("accuracy")
        row["zeroshot_accuracy_ci"] = zs.get("accuracy_ci")
        row["chance_accuracy"] = zs.get("chance_accuracy")
    vf = results.get("vocabfine")
    if isinstance(vf, dict) and vf.get("after"):
        row["vocabfine_auc"], row["vocabfine_ci"] = vf["after"]["auc"], vf["after"].get("ci")
    rt = results.get("retrieval")
    if isinstance(rt, dict) and "per_sequence" in rt:
        r2v = rt["per_sequence"]["report_to_volume"]
        row["R@5"], row["R@5_ci"], row["chance@5"] = (r2v.get("R@5"), r2v.get("ci@5"),
                                                      r2v.get("chance@5"))
        if rt.get("case"):
            row["case_R@5"] = rt["case"]["report_to_volume"]["R@5"]
            row["case_R@5_ci"] = rt["case"]["report_to_volume"].get("ci@5")
            row["case_chance@5"] = rt["case"]["report_to_volume"]["chance@5"]
    pr = results.get("probe")
    ev = (pr or {}).get((pr or {}).get("eval_split", "test")) if isinstance(pr, dict) else None
    if isinstance(ev, dict):
        row["probe_accuracy"] = ev.get("accuracy")
        row["probe_ci"] = (ev.get("ci") or {}).get("accuracy")
    sg = results.get("segment")
    if isinstance(sg, dict) and "dice" in sg:
        row["dice"], row["dice_ci"] = sg["dice"], sg.get("dice_ci")
    rg = results.get("report_gen")
    if isinstance(rg, dict) and rg.get("bleu"):
        row["BLEU-4"] = rg["bleu"].get("BLEU-4")
        row["rouge_l"], row["rouge_l_ci"] = rg.get("rouge_l"), rg.get("rouge_l_ci")
        ce = rg.get("clinical") or {}
        if ce.get("n"):
            row["clinical_accuracy"], row["clinical_ci"] = ce["accuracy"], ce.get("accuracy_ci")
            row["clinical_ceiling"] = ce["ceiling"]["accuracy"]
    return row


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return "-" if v[0] is None else f"{v[0]:.3f}-{v[1]:.3f}"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"
    return str(v)


def markdown_table(summary: Mapping[str, Mapping[str, Any]], title: str = "") -> str:
    """A Markdown table: one row per model, one column per headline number."""
    head = "| pre-training | " + " | ".join(label for _, label in _COLUMNS) + " |"
    sep = "|---|" + "---|" * len(_COLUMNS)
    rows = [f"| {name} | " + " | ".join(_fmt(s.get(k)) for k, _ in _COLUMNS) + " |"
            for name, s in summary.items()]
    return "\n".join(([f"# {title}", ""] if title else []) + [head, sep] + rows) + "\n"


def compare_pretraining(models: Mapping[str, str | Path | LoadedVLM | None],
                        manifest: Manifest | str | Path, out_dir: str | Path, *,
                        split: str = "test", train_split: str = "train",
                        tasks: Sequence[str] = TASKS, knowledge: str | Path | None = None,
                        seg_epochs: int = 10, gen_epochs: int = 20, batch_size: int = 4,
                        vocabfine_n: int = 8,
                        seed: int = 0, experiment=None, cache_dir: str | Path | None = None,
                        device: str | None = None, resume: bool = False,
                        report_per_case: bool = True) -> dict[str, Any]:
    """Run ``tasks`` for every model of ``models`` (name -> folder / LoadedVLM / None); see the
    module doc. Returns the ``comparison.json`` content.

    ``report_per_case``: report generation writes each case's global impression from all its
    sequences (the report that names the diagnosis, so clinical accuracy means something);
    ``False``: one report per sequence.

    Each finished task's result is kept in ``OUT/<model>/<task>/task_result.json`` with the
    settings it ran with; with ``resume=True`` a task whose file holds the same settings (an
    interrupted run) is read back instead of run again."""
    from medmap.downstream.probe import probe
    from medmap.downstream.report_gen import report_generation
    from medmap.downstream.vocabfine import vocabfine
    from medmap.downstream.retrieval import retrieval
    from medmap.downstream.segment import segment
    from medmap.downstream.zeroshot import zeroshot

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    if not models:
        raise UserError("no model to compare")
    out = Path(out_dir)
    manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    loaded: dict[str, LoadedVLM | None] = {}
    first: LoadedVLM | None = None
    for name, m in models.items():
        if m is not None:
            loaded[name] = load_vlm(m, device=device)
            first = first or loaded[name]
    if first is None and experiment is None and any(m is None for m in models.values()):
        raise UserError("'no pre-training' (None) needs the architecture of a named model or "
                        "an ExperimentConfig (experiment=)")
    results: dict[str, dict[str, Any]] = {}
    summary: dict[str, dict[str, Any]] = {}
    for name, m in models.items():
        vlm = loaded.get(name) or load_vlm(None, like=first, experiment=experiment, seed=seed,
                                           device=device)
        folder = out / safe_name(name)
        loader = vlm.loader(cache_dir)
        res: dict[str, Any] = {"model": vlm.name}
        task_settings = {                  # what a kept result must match to be reused
            "vocabfine": {"n": vocabfine_n}, "segment": {"epochs": seg_epochs},
            "report_gen": {"epochs": gen_epochs, "per_case": report_per_case}}
        runs = {
            "zeroshot": lambda: zeroshot(vlm, manifest, split, knowledge, folder / "zeroshot",
                                         loader=loader, batch_size=batch_size),
            "vocabfine": lambda: vocabfine(vlm, manifest, vocabfine_n, train_split=train_split,
                                           eval_split=split, knowledge=knowledge,
                                           out_dir=folder / "vocabfine", loader=loader,
                                           seed=seed),
            "retrieval": lambda: retrieval(vlm, manifest, split, folder / "retrieval",
                                           loader=loader, batch_size=batch_size),
            "probe": lambda: probe(vlm, manifest, folder / "probe", mode="linear",
                                   train_split=train_split, eval_split=split, seed=seed,
                                   loader=loader, batch_size=batch_size),
            "segment": lambda: segment(vlm, manifest, folder / "segment", train_split=train_split,
                                       eval_split=split, epochs=seg_epochs, seed=seed,
                                       loader=loader, write_masks=False),
            "report_gen": lambda: report_generation(vlm, manifest, folder / "report_gen",
                                                    train_split=train_split, eval_split=split,
                                                    epochs=gen_epochs, seed=seed, loader=loader,
                                                    per_case=report_per_case),
        }
        for task in tasks:
            done = folder / task / "task_result.json"
            settings = {"model": vlm.name, "split": split, "train_split": train_split,
                        "seed": seed, **task_settings.get(task, {})}
            try:        # an unreadable file (a run killed while writing it) is run again
                kept = json.loads(done.read_text(encoding="utf-8")) if resume else None
            except (OSError, ValueError):
                kept = None
            if kept and kept.get("settings") == json.loads(json.dumps(settings)):
                res[task] = kept["result"]
                continue
            try:
                res[task] = runs[task]()
            except TaskNotApplicable as e:
                res[task] = {"not_applicable": str(e)}
            if task == "zeroshot" and isinstance(res[task], dict):
                res[task].pop("labels", None), res[task].pop("probs", None)
            write_json({"settings": settings, "result": res[task]}, done)
        results[name] = res
        summary[name] = {"model": vlm.name, **summary_row(res)}
    doc = {"split": split, "train_split": train_split, "tasks": list(tasks), "seed": seed,
           "seg_epochs": seg_epochs, "gen_epochs": gen_epochs, "vocabfine_n": vocabfine_n,
           "report_per_case": report_per_case,
           "summary": summary,
           "results": results}
    write_json(doc, out / "comparison.json")
    (out / "comparison.md").write_text(
        markdown_table(summary, f"Downstream comparison ({split} split)"), encoding="utf-8")
    return doc


# the headline numbers of the multi-seed table (one value per seed, no per-seed CI)
_SEED_COLUMNS = [("zeroshot_auc", "zero-shot AUC"), ("zeroshot_accuracy", "zero-shot acc"),
                 ("vocabfine_auc", "VocabFine AUC"), ("R@5", "R@5 per seq."),
                 ("case_R@5", "case R@5"), ("probe_accuracy", "linear probe acc"),
                 ("dice", "Dice"), ("BLEU-4", "BLEU-4"), ("rouge_l", "ROUGE-L"),
                 ("clinical_accuracy", "clinical acc")]


def merge_seeds(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several seeds' ``comparison.json`` contents -> one document: per model and headline
    column the per-seed values and their mean (``None`` where a seed has no value), the chance
    levels, each seed's full summary, and why any task was not applicable.

    Example:
        >>> merged = merge_seeds([doc_seed0, doc_seed1])                 # doctest: +SKIP
        >>> merged["summary"]["MG-3D"]["dice"]        # {"seeds": [0.71, 0.69], "mean": 0.70}
    """
    if not docs:
        raise UserError("no comparison to merge")
    names = list(docs[0]["summary"])
    missing = [(d.get("seed"), n) for d in docs for n in names if n not in d["summary"]]
    if missing:
        raise UserError(f"the comparisons do not hold the same models: (seed, model) "
                        f"{missing} missing; run every method for every seed")
    summary: dict[str, dict[str, Any]] = {}
    reasons: dict[str, dict[str, str]] = {}
    for name in names:
        row: dict[str, Any] = {}
        for key, _ in _SEED_COLUMNS:
            vals = [d["summary"][name].get(key) for d in docs]
            have = [float(v) for v in vals if v is not None]
            row[key] = {"seeds": vals,
                        "mean": sum(have) / len(have) if len(have) == len(vals) else None}
        for key in ("chance_accuracy", "chance@5", "case_chance@5", "clinical_ceiling"):
            row[key] = docs[0]["summary"][name].get(key)
        summary[name] = row
        for d in docs:
            for task, res in d.get("results", {}).get(name, {}).items():
                if isinstance(res, dict) and "not_applicable" in res:
                    reasons.setdefault(name, {})[task] = res["not_applicable"]
    return {"seeds": [d.get("seed") for d in docs], "split": docs[0].get("split"),
            "summary": summary, "not_applicable": reasons,
            "per_seed": [{"seed": d.get("seed"), "summary": d["summary"]} for d in docs]}


def seeds_markdown(merged: Mapping[str, Any], title: str = "") -> str:
    """The multi-seed table: "mean (seed values)" per cell, then each seed's full table (with
    its 95% CIs) and the reason of every "n/a"."""
    seeds = merged["seeds"]
    head = "| pre-training | " + " | ".join(lbl for _, lbl in _SEED_COLUMNS) + " |"
    rows = []
    for name, row in merged["summary"].items():
        cells = []
        for key, _ in _SEED_COLUMNS:
            c = row[key]
            vals = " / ".join(_fmt(v) for v in c["seeds"])
            cells.append("n/a" if c["mean"] is None and all(v is None for v in c["seeds"])
                         else f"{_fmt(c['mean'])} ({vals})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    any_row = next(iter(merged["summary"].values()))
    lines = ([f"# {title}", ""] if title else []) + [
        f"Mean over seeds {seeds} (each seed's value in brackets, in that order); "
        f"{merged['split']} split. Chance: accuracy {_fmt(any_row['chance_accuracy'])}, "
        f"per-sequence R@5 {_fmt(any_row['chance@5'])}, case R@5 "
        f"{_fmt(any_row['case_chance@5'])}; the clinical-accuracy extractor reads the true "
        f"reports at {_fmt(any_row['clinical_ceiling'])} (its ceiling).", "",
        head, "|---|" + "---|" * len(_SEED_COLUMNS), *rows, ""]
    for name, tasks in merged["not_applicable"].items():
        for task, why in tasks.items():
            lines.append(f"- n/a, {name}, {task}: {why}")
    for one in merged["per_seed"]:
        lines += ["", markdown_table(one["summary"], f"Seed {one['seed']}").replace("# ", "## ", 1)]
    return "\n".join(lines).rstrip() + "\n"
