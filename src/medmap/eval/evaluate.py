"""Evaluate a fine-tuned MedMAP classifier on one split of a manifest.

:func:`evaluate` loads the model folder written by ``save_pretrained`` (or a run folder holding
``model/``), validates the manifest (:func:`~medmap.data.validate.require_valid`), preprocesses
the split's cases with the *stored* preprocessing settings, runs inference from the volumes alone
(no report, no label reaches the model), and writes into ``out_dir``:

* ``metrics.json``: run summary, :func:`~medmap.metrics.full_metrics` (over the labelled
  cases), Grad-CAM localisation metrics (cases with a lesion mask), per-case predictions and
  per-case localisation records;
* ``predictions.csv``: one row per case (the columns of :func:`medmap.predict.predict`);
* ``report.html``: the self-contained report (:mod:`medmap.eval.report`).

It also adds the metrics to the model folder's card (``README.md``, see
:func:`medmap.models.hub.update_model_card`): one block per split and manifest, replaced when
the same evaluation runs again. The manifest's reports are not checked: evaluation never reads
them.

Example:
    >>> from medmap.eval.evaluate import evaluate
    >>> res = evaluate("runs/finetune", "sim/manifest.jsonl", split="test")   # doctest: +SKIP
    >>> res["metrics"]["accuracy"], res["files"]["report"]                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmap.config import UserError
from medmap.eval.viewer import viewer_volumes

__all__ = ["evaluate", "axial_axis", "card_section"]


def axial_axis(orientation: str) -> int:
    """Index of the inferior-superior axis in the preprocessed ``(D, H, W)`` volume."""
    o = orientation.upper()
    return next(i for i, c in enumerate(o) if c in "SI")


def _slice_index(axis: int, mask: torch.Tensor | None, cams: list[torch.Tensor]) -> tuple[int, str]:
    if mask is not None and bool((mask > 0).any()):
        coords = (mask > 0).nonzero()[:, axis].float()
        return int(coords.mean().round().item()), "lesion mask centroid"
    if cams:
        total = torch.stack(cams).sum(0)
        pos = np.unravel_index(int(total.argmax()), tuple(total.shape))
        return int(pos[axis]), "CAM maximum"
    return 0, "first slice"


def _label_map(organ: str | None, model_classes: list[str]) -> dict[int, int]:
    """Organ vocabulary index -> model class index."""
    from medmap.data.vocab import get_organ

    if not organ:
        return {i: i for i in range(len(model_classes))}
    vocab = get_organ(organ).classes
    return {i: model_classes.index(c) for i, c in enumerate(vocab) if c in model_classes}


def evaluate(model_dir: str | Path, manifest_path: str | Path | None = None, split: str = "test",
             out_dir: str | Path | None = None,
             preprocess_override: Mapping[str, Any] | Any = None, n_cam_cases: int = 2,
             batch_size: int = 4, *, n_boot: int = 1000, localise: bool = True,
             device: str | torch.device | None = None, cache_dir: str | Path | None = None,
             seed: int = 0, language: dict[str, Any] | None = None,
             baselines: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a classifier on ``split`` of ``manifest_path``; returns the ``metrics.json``
    document (plus ``files``: the paths written).

    Args:
        model_dir: the model folder (``config.json`` + ``model.safetensors``) or a run folder
            holding ``model/``.
        manifest_path: JSONL / CSV manifest; refused with a :class:`ManifestError` listing every
            problem when invalid. None: the training run's (:func:`run_manifest`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        out_dir: output folder; default ``<model_dir>/../eval-<split>``.
        preprocess_override: replace stored preprocessing fields (dict), with a warning.
        n_cam_cases: CAM overlays in the report per true class, for correct and for wrong
            predictions each (the first cases in manifest order).
        batch_size: inference batch size.
        n_boot: bootstrap resamples for the confidence intervals.
        localise: compute Grad-CAM localisation metrics on every case with a lesion mask
            (otherwise CAMs are computed for the overlay cases only).
        device: torch device (default: CUDA when available).
        cache_dir: optional preprocessed-volume cache folder.
        language: the pre-trained model's zero-shot and retrieval results
            (``{"zeroshot": ..., "retrieval": ..., "model": folder}``) for the report's
            "Language" section.
        baselines: results shown beside the model's in the report (name -> a document with
            ``metrics``, e.g. :func:`medmap.baselines.radiomics.run_radiomics`'s).
    """
    from torch.utils.data import DataLoader

    from medmap import __version__
    from medmap.data.cache import VolumeCache
    from medmap.data.datasets import CaseDataset, collate_cases
    from medmap.data.manifest import Manifest, ManifestError
    from medmap.data.preprocess import Preprocessor
    from medmap.data.validate import require_valid
    from medmap.cam import aggregate_localisation, gradcam, localisation
    from medmap.eval.language import language_section
    from medmap.metrics import full_metrics
    from medmap.eval.report import write_report
    from medmap.predict import prediction_row, write_rows_csv

    t0 = time.time()
    from medmap.inference import csa_description, load_classifier, report_inputs, run_manifest

    lm = load_classifier(model_dir, preprocess_override, device)
    text_encoder = None
    model, doc, pcfg, mdir = lm.model, lm.doc, lm.preprocess, Path(lm.source)
    if manifest_path is None:
        manifest_path = run_manifest(model_dir)
    cfg = model.cfg
    classes, mods = list(cfg.classes), list(cfg.modalities)
    organ = doc.get("organ") or cfg.organ or None
    # only the model organ's cases are read and checked (the ROI mask is that organ's)
    manifest = require_valid(Manifest.load(manifest_path).select(organ=organ), manifest_path,
                             required_masks=[] if pcfg.roi_mask is None else [pcfg.roi_mask],
                             check_reports=False,                 # reports: never read here
                             memo_dir=Path(cache_dir) / "checks" if cache_dir else None)
    chosen = manifest.select(split=split, organ=organ)
    if not chosen.cases:
        have = sorted({c.split for c in manifest.cases if organ is None or c.organ == organ})
        raise ManifestError([f"no {organ or ''} cases in split {split!r}; the manifest's "
                             f"{organ or ''} splits are {have}; pick one with --split"],
                            manifest_path)
    loader = VolumeCache(cache_dir, Preprocessor(pcfg)) if cache_dir else Preprocessor(pcfg)
    report_mode = getattr(cfg, "csa_text", "knowledge") == "report"
    if report_mode:        # the model reads each case's reports: no CAMs (they need volumes only)
        warnings.warn(f"{mdir}: csa_text 'report' -- the cases' own reports guide the "
                      "prediction; wherever a report states the diagnosis this leaks the label",
                      stacklevel=2)
        n_cam_cases, localise = 0, False
        text_encoder = lm.text_encoder()
    needs_mask = bool(getattr(model, "needs_mask", False))
    mask_key = cfg.mask_key if needs_mask else "lesion"
    if needs_mask:
        lacking = [c.case_id for c in chosen.cases if mask_key not in c.masks]
        if lacking:
            raise ManifestError([f"case {cid!r}: masks.{mask_key}: missing; this model reads "
                                 "the lesion mask at inference (mask pooling / region "
                                 "features)" for cid in lacking], manifest_path)
    ds = CaseDataset(chosen, loader, modalities=mods, split=split, with_reports=report_mode,
                     with_masks=True, mask_key=mask_key)
    if len(ds) == 0:
        raise ManifestError([f"case {cid!r}: modalities: none of the model's modalities {mods}"
                             for cid in ds.skipped], manifest_path)
    if ds.skipped:
        warnings.warn(f"{len(ds.skipped)} case(s) have none of the model's modalities {mods} and "
                      f"are skipped: {ds.skipped}", stacklevel=2)
    lab_map = _label_map(organ, classes)
    dev = next(model.parameters()).device
    axis = axial_axis(pcfg.orientation)

    case_ids: list[str] = []
    labels: list[int] = []
    probs_l: list[np.ndarray] = []
    fusion_l: list[np.ndarray] = []
    present_l: list[np.ndarray] = []
    loc_records: list[dict[str, Any]] = []
    overlays: list[dict[str, Any]] = []
    picked: dict[tuple[int, bool], int] = {}
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_cases):
        images, present = batch["images"].to(dev), batch["present"].to(dev)
        kw = report_inputs(text_encoder, batch["reports"], mods, dev) if report_mode else {}
        lesion = batch["mask"].to(dev) if needs_mask else None
        if lesion is not None:
            kw["lesion_mask"] = lesion
        with torch.no_grad():
            out = model(images, present, **kw)
        probs = out["probs"].float().cpu().numpy()
        pred = probs.argmax(1)
        ys = []
        for y, cid in zip(batch["label"].tolist(), batch["case_id"]):
            if y >= 0 and y not in lab_map:
                raise UserError(f"case {cid!r}: label index {y} is not one of the model's "
                                f"classes {classes}; evaluate with a model of this organ's "
                                "classes or drop the case")
            ys.append(lab_map[y] if y >= 0 else -1)
        has_mask = batch["mask_present"] & (batch["mask"].flatten(1) > 0).any(1)
        rows: list[int] = []
        show: list[int] = []
        for b, y in enumerate(ys):
            if y >= 0 and n_cam_cases > 0:
                key = (y, bool(pred[b] == y))
                if picked.get(key, 0) < n_cam_cases:
                    picked[key] = picked.get(key, 0) + 1
                    show.append(b)
            if b in show or (localise and bool(has_mask[b])):
                rows.append(b)
        if rows:
            r = torch.tensor(rows)
            cams = gradcam(model, images[r.to(dev)], present[r.to(dev)],
                           class_index=torch.as_tensor(pred[rows]),
                           lesion_mask=None if lesion is None else lesion[r.to(dev)])
            for j, b in enumerate(rows):
                cid = batch["case_id"][b]
                mask = batch["mask"][b, 0] if bool(batch["mask_present"][b]) else None
                here = [n for i, n in enumerate(mods) if bool(present[b, i]) and n in cams]
                if localise and bool(has_mask[b]):
                    for n in here:
                        loc_records.append({"case_id": cid, "modality": n,
                                            **localisation(cams[n][j], mask)})
                if b in show:
                    k, src = _slice_index(axis, mask, [cams[n][j] for n in here])
                    panels = [{"modality": n,
                               "image": images[b, mods.index(n), 0].select(axis, k).cpu().numpy(),
                               "cam": cams[n][j].select(axis, k).numpy(),
                               "mask": None if mask is None else mask.select(axis, k).numpy()}
                              for n in here]
                    overlays.append({"case_id": cid, "true_index": ys[b],
                                     "true": classes[ys[b]], "pred": classes[int(pred[b])],
                                     "prob": float(probs[b, pred[b]]),
                                     "correct": bool(pred[b] == ys[b]), "slice_index": k,
                                     "slice_axis": axis, "slice_source": src, "panels": panels,
                                     "volumes": viewer_volumes(
                                         {n: images[b, mods.index(n), 0] for n in here},
                                         {n: cams[n][j] for n in here}, mask,
                                         pcfg.orientation)})
        case_ids += list(batch["case_id"])
        labels += ys
        probs_l.append(probs)
        fusion_l.append(out["fusion"].float().cpu().numpy())
        present_l.append(batch["present"].numpy())

    labels_a = np.asarray(labels, dtype=int)
    probs_a = np.concatenate(probs_l)
    fusion_a = np.concatenate(fusion_l)
    present_a = np.concatenate(present_l)
    lab = labels_a >= 0
    metrics = full_metrics(labels_a[lab], probs_a[lab], classes, n_boot=n_boot, seed=seed) \
        if lab.any() else None
    loc = aggregate_localisation(loc_records) if loc_records else None
    cases = []
    for i, cid in enumerate(case_ids):
        row = prediction_row(cid, probs_a[i], classes,
                             [m for m, p in zip(mods, present_a[i]) if p],
                             [m for m, p in zip(mods, present_a[i]) if not p],
                             label=classes[labels_a[i]] if labels_a[i] >= 0 else None,
                             source=str(manifest_path))
        cases.append(row)

    out_path = Path(out_dir) if out_dir is not None else mdir.resolve().parent / f"eval-{split}"
    out_path.mkdir(parents=True, exist_ok=True)
    info = {"model": str(mdir), "manifest": str(manifest_path), "split": split, "organ": organ,
            "modalities": ", ".join(mods), "classes": len(classes), "cases": len(case_ids),
            "labelled cases": int(lab.sum()),
            "cases with lesion masks": len({r["case_id"] for r in loc_records}) if localise
            else None,
            "preprocess size": "x".join(map(str, pcfg.size)),
            "CSA text guidance": csa_description(cfg),
            "medmap version": __version__, "model medmap version": doc.get("medmap_version"),
            "model git commit": doc.get("git_commit"),
            "evaluated": time.strftime("%Y-%m-%d %H:%M:%S")}
    files = {"metrics": str(out_path / "metrics.json"),
             "predictions": str(out_path / "predictions.csv"),
             "report": str(out_path / "report.html")}
    result: dict[str, Any] = {"info": info, "classes": classes, "modalities": mods,
                              "metrics": metrics, "localisation": loc, "cases": cases,
                              "localisation_cases": loc_records,
                              "seconds": round(time.time() - t0, 2), "files": files}
    if baselines:
        result["baselines"] = {n: {k: (b.get("metrics") or {}).get(k)
                                   for k in ("accuracy", "auc", "ci")}
                               for n, b in baselines.items()}
    (out_path / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False),
                                           encoding="utf-8")
    write_rows_csv(cases, out_path / "predictions.csv")
    write_report(out_path / "report.html", result, labels=labels_a, probs=probs_a,
                 fusion=fusion_a, overlays=overlays,
                 title=f"medmap evaluation: {organ or ''} {split}".replace("  ", " "),
                 extra=[("Language (pre-trained model)", language_section(language))]
                 if language else (), run_dir=_run_folder(mdir), baselines=baselines)
    _update_card(mdir, result)
    return result


def _run_folder(model_dir: Path) -> Path | None:
    """The training run folder of a model folder (its parent holding ``logs/``), if any."""
    run = Path(model_dir).resolve().parent
    return run if (run / "logs" / "metrics.csv").is_file() else None


def card_section(result: dict[str, Any]) -> tuple[str, str]:
    """``(key, markdown)`` of an evaluation for the model card: one key per split and
    manifest (so the same evaluation run again replaces its block)."""
    import hashlib

    info, m, loc = result["info"], result.get("metrics"), result.get("localisation")
    manifest = str(Path(info["manifest"]).resolve())
    key = f"eval:{info['split']}:{hashlib.sha1(manifest.encode()).hexdigest()[:12]}"
    lines = [f"### {info['split']} split of `{manifest}`", "",
             f"Evaluated {info['evaluated']} with medmap {info['medmap version']}: "
             f"{info['cases']} case(s), {info['labelled cases']} labelled.", ""]

    def val(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def rng(c: Any) -> str:
        return f"{c[0]:.3f}-{c[1]:.3f}" if c and c[0] is not None else ""

    if m is None:
        lines.append("No labelled case: no classification metrics (the predictions are in "
                     "`predictions.csv`).")
    else:
        ci = m.get("ci", {})
        lvl = int(round(100 * ci.get("level", 0.95)))
        lines += [f"| metric | value | {lvl}% CI |", "|---|---|---|",
                  f"| accuracy | {val(m.get('accuracy'))} | {rng(ci.get('accuracy'))} |",
                  f"| balanced accuracy | {val(m.get('balanced_accuracy'))} | |",
                  f"| AUC{' (macro one-vs-rest)' if len(m.get('classes', [])) > 2 else ''} | "
                  f"{val(m.get('auc'))} | {rng(ci.get('auc'))} |"]
    overall = (loc or {}).get("overall") or {}
    if overall.get("n"):
        lines += ["", f"Grad-CAM localisation over {overall['n']} (case, modality) maps: "
                      f"pointing game {val(overall.get('pointing_game'))} "
                      f"(random point {val(overall.get('pointing_chance'))}), "
                      f"CAM AUC {val(overall.get('cam_auc'))}."]
    lines += ["", f"Files: `{result['files']['metrics']}`, `{result['files']['report']}`."]
    return key, "\n".join(lines)


def _update_card(model_dir: Path, result: dict[str, Any]) -> None:
    """Add the evaluation to the model folder's card; a read-only model folder is a warning."""
    from medmap.models.hub import update_model_card

    key, text = card_section(result)
    try:
        update_model_card(model_dir, key, text)
    except OSError as e:
        warnings.warn(f"{model_dir}: could not add the evaluation to the model card "
                      f"({e.strerror or e}); the metrics are in {result['files']['metrics']}",
                      stacklevel=3)
