"""Zero-shot abnormality classification with text prompts (MG-3D's vocabulary-prompt task).

Prompts come from a YAML file (``configs/zeroshot-prompts.yaml`` documents the format; the
built-in :func:`default_prompts` is the same content)::

    version: 1
    organs:
      liver:
        positive_templates: ["MRI of the liver showing a {finding}.", ...]
        negative_templates: ["MRI of the liver with no {finding}.", ...]
        classes:
          hepatic_cyst:
            findings: ["hepatic cyst", "simple liver cyst"]   # fill {finding}
            positive: ["..."]          # optional extra prompts, used as written
            negative: ["..."]

Per class ``k``, the *positive* prompt set is every positive template filled with every finding
(plus the extra ``positive`` prompts), the *negative* set likewise. A set is ensembled by
averaging its L2-normalised projected text embeddings (``text_proj`` over the frozen encoder)
and re-normalising, giving ``t_k^+`` and ``t_k^-``.

The visual feature of a case is the mean of its available modalities' L2-normalised
``encode_image`` embeddings, re-normalised (``modality=`` uses one modality only).

* per class: ``p_k = softmax(s * [cos(v, t_k^+), cos(v, t_k^-)])[0]`` with ``s`` the model's
  learned ``logit_scale`` (exp, clamped at 100; 1/0.07 if the model has none); one-vs-rest
  AUC of ``p_k`` against ``label == k`` (sklearn), macro AUC = mean over classes with both
  positives and negatives;
* multi-class: ``softmax(s * cos(v, t_k^+))`` over classes; accuracy of its argmax and
  macro AUC via :func:`medmap.metrics.classification_metrics`.

Example:
    >>> from medmap.downstream.zeroshot import zeroshot
    >>> res = zeroshot("runs/pretrain/model", "sim/manifest.jsonl", split="test")  # doctest: +SKIP
    >>> res["macro_auc"], res["multiclass"]["accuracy"]                              # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medmap.data.manifest import Manifest
from medmap.data.vocab import ORGANS, get_organ
from medmap.downstream.common import write_json
from medmap.downstream.features import case_embeddings, volume_embeddings
from medmap.downstream.vlm import LoadedVLM, load_vlm

__all__ = ["default_prompts", "load_prompts", "expand_prompts", "zeroshot",
           "zeroshot_from_embeddings", "per_class_auc", "DEFAULT_PROMPTS_FILE"]

DEFAULT_PROMPTS_FILE = "configs/zeroshot-prompts.yaml"

_SYNONYMS: dict[str, list[str]] = {
    "hepatic_hemangioma": ["hepatic hemangioma", "liver haemangioma"],
    "intrahepatic_cholangiocarcinoma": ["intrahepatic cholangiocarcinoma",
                                        "mass-forming cholangiocarcinoma"],
    "hepatic_abscess": ["hepatic abscess", "liver abscess"],
    "hepatic_metastasis": ["hepatic metastasis", "liver metastases"],
    "hepatic_cyst": ["hepatic cyst", "simple liver cyst"],
    "focal_nodular_hyperplasia": ["focal nodular hyperplasia", "FNH with a central scar"],
    "hepatocellular_carcinoma": ["hepatocellular carcinoma", "HCC with arterial enhancement "
                                 "and washout"],
    "benign": ["benign tumour", "benign extra-axial lesion such as a meningioma"],
    "malignant": ["malignant tumour", "malignant intra-axial tumour such as a glioblastoma"],
}

_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "liver": {
        "positive_templates": [
            "MRI of the liver showing a {finding}.",
            "There is a {finding} in the liver.",
            "Findings are consistent with {finding}.",
            "Focal liver lesion, most likely {finding}.",
        ],
        "negative_templates": [
            "MRI of the liver with no {finding}.",
            "There is no {finding} in the liver.",
            "Findings are not consistent with {finding}.",
            "No evidence of {finding}.",
        ],
    },
    "brain": {
        "positive_templates": [
            "MRI of the brain showing a {finding}.",
            "There is a {finding} in the brain.",
            "Findings are consistent with a {finding}.",
            "Brain lesion, most likely a {finding}.",
        ],
        "negative_templates": [
            "MRI of the brain with no {finding}.",
            "There is no {finding} in the brain.",
            "Findings are not consistent with a {finding}.",
            "No evidence of a {finding}.",
        ],
    },
}


def default_prompts() -> dict[str, Any]:
    """The built-in prompt document (the content of ``configs/zeroshot-prompts.yaml``)."""
    organs: dict[str, Any] = {}
    for organ, spec in ORGANS.items():
        t = _TEMPLATES[organ]
        organs[organ] = {
            "positive_templates": list(t["positive_templates"]),
            "negative_templates": list(t["negative_templates"]),
            "classes": {c: {"findings": list(_SYNONYMS.get(c, [d]))}
                        for c, d in zip(spec.classes, spec.class_descriptions)},
        }
    return {"version": 1, "organs": organs}


def load_prompts(source: str | Path | dict | None = None) -> dict[str, Any]:
    """A prompt document from a YAML path, a dict, or None (the built-in defaults); checked."""
    if source is None:
        doc = default_prompts()
    elif isinstance(source, dict):
        doc = source
    else:
        p = Path(source)
        if not p.exists():
            raise FileNotFoundError(f"prompt file {p} not found; see {DEFAULT_PROMPTS_FILE}")
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("organs"), dict):
        raise ValueError(f"{source}: a prompt file needs a top-level 'organs' mapping "
                         f"(see {DEFAULT_PROMPTS_FILE})")
    return doc


def expand_prompts(doc: dict[str, Any], organ: str,
                   classes: list[str] | None = None) -> dict[str, dict[str, list[str]]]:
    """``{class: {"positive": [...], "negative": [...]}}`` for ``organ``'s classes (all of the
    organ's vocabulary by default); raises ValueError naming a class without prompts."""
    spec = get_organ(organ)
    classes = list(classes or spec.classes)
    odoc = doc["organs"].get(organ)
    if not isinstance(odoc, dict):
        raise ValueError(f"the prompt file has no prompts for organ {organ!r} "
                         f"(has: {', '.join(doc['organs'])})")
    pos_t = list(odoc.get("positive_templates") or [])
    neg_t = list(odoc.get("negative_templates") or [])
    cdoc = odoc.get("classes") or {}
    out: dict[str, dict[str, list[str]]] = {}
    problems = []
    for c in classes:
        entry = cdoc.get(c) or {}
        findings = list(entry.get("findings") or [])
        if not findings and c in spec.classes:
            findings = [spec.class_descriptions[spec.classes.index(c)]]
        pos = [t.format(finding=f) for t in pos_t for f in findings] + list(entry.get("positive") or [])
        neg = [t.format(finding=f) for t in neg_t for f in findings] + list(entry.get("negative") or [])
        if not pos or not neg:
            problems.append(f"class {c!r}: needs positive and negative prompts (templates with "
                            "findings, or explicit 'positive' / 'negative' lists)")
        out[c] = {"positive": _dedup(pos), "negative": _dedup(neg)}
    if problems:
        raise ValueError(f"prompts for organ {organ!r}: " + "; ".join(problems))
    return out


def _dedup(xs: list[str]) -> list[str]:
    return list(dict.fromkeys(x.strip() for x in xs if x and x.strip()))


def _ensemble(emb: np.ndarray) -> np.ndarray:
    v = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    v = v.mean(0)
    return v / max(np.linalg.norm(v), 1e-12)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def per_class_auc(labels: np.ndarray, scores: np.ndarray,
                  classes: list[str]) -> tuple[dict[str, float | None], float | None]:
    """One-vs-rest AUC of ``scores[:, k]`` for ``labels == k`` (None where a class has no
    positive or no negative case) and their mean over the defined ones."""
    from sklearn.metrics import roc_auc_score

    per: dict[str, float | None] = {}
    for k, c in enumerate(classes):
        pos = labels == k
        per[c] = float(roc_auc_score(pos, scores[:, k])) if pos.any() and (~pos).any() else None
    vals = [v for v in per.values() if v is not None]
    return per, (float(np.mean(vals)) if vals else None)


def zeroshot_from_embeddings(image_emb: np.ndarray, labels: np.ndarray, pos_emb: np.ndarray,
                             neg_emb: np.ndarray, classes: list[str],
                             logit_scale: float = 1 / 0.07) -> dict[str, Any]:
    """Zero-shot scores and metrics from ready embeddings.

    ``image_emb`` (N, d), ``labels`` (N,) class indices, ``pos_emb`` / ``neg_emb`` (K, d) the
    ensembled prompt embeddings of the K ``classes``. Returns ``per_class_auc``, ``macro_auc``,
    ``multiclass`` (accuracy, balanced accuracy, AUC), ``scores`` (N, K) per-class probabilities
    and ``multiclass_probs`` (N, K).
    """
    from medmap.metrics import classification_metrics

    v = image_emb / np.maximum(np.linalg.norm(image_emb, axis=1, keepdims=True), 1e-12)
    tp = pos_emb / np.maximum(np.linalg.norm(pos_emb, axis=1, keepdims=True), 1e-12)
    tn = neg_emb / np.maximum(np.linalg.norm(neg_emb, axis=1, keepdims=True), 1e-12)
    sp, sn = v @ tp.T, v @ tn.T                                        # (N, K)
    scores = _softmax(logit_scale * np.stack([sp, sn], -1), -1)[..., 0]  # (N, K)
    multi = _softmax(logit_scale * sp, -1)
    labels = np.asarray(labels).astype(int)
    per, macro = per_class_auc(labels, scores, classes)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mc = classification_metrics(labels, multi) if len(labels) else {}
    return {"n": int(len(labels)), "classes": list(classes), "per_class_auc": per,
            "macro_auc": macro, "multiclass": {k: float(x) for k, x in mc.items()},
            "logit_scale": float(logit_scale), "scores": scores, "multiclass_probs": multi}


def _logit_scale(model) -> float:
    ls = getattr(model, "logit_scale", None)
    if isinstance(ls, torch.Tensor):
        return float(ls.detach().float().exp().clamp(max=100.0))
    return 1 / 0.07


def zeroshot(model: str | Path | LoadedVLM | None, manifest: Manifest | str | Path,
             split: str = "test", prompts: str | Path | dict | None = None,
             out_dir: str | Path | None = None, *, modality: str | None = None,
             text_encoder=None, loader=None, cache_dir: str | Path | None = None,
             batch_size: int = 4, device: str | None = None, experiment=None,
             seed: int = 0) -> dict[str, Any]:
    """Zero-shot abnormality classification of ``split``'s labelled cases (see module doc).

    ``model``: a model folder, a :class:`LoadedVLM`, or None (no pre-training; needs
    ``experiment``). Writes ``zeroshot.json`` (metrics, prompts used) and ``scores.csv`` (per
    case) to ``out_dir`` when given; returns the metrics dict (without the score arrays).
    """
    vlm = load_vlm(model, experiment=experiment, device=device, seed=seed)
    doc = load_prompts(prompts)
    classes = list(get_organ(vlm.organ).classes)
    sets = expand_prompts(doc, vlm.organ, classes)
    items = [it for it in vlm.volume_items(manifest, split) if it.case.label is not None]
    if not items:
        raise ValueError(f"no labelled {vlm.organ} case in split {split!r}; zero-shot "
                         "classification needs labels to score")
    if loader is None:
        loader = vlm.loader(cache_dir)
    emb = volume_embeddings(vlm, items, loader, batch_size)
    cases, cemb = case_embeddings(items, emb, modality)
    if not cases:
        raise ValueError(f"no case of split {split!r} has modality {modality!r}")
    labels = np.array([c.label_index for c in cases])
    from medmap.downstream.features import text_embeddings

    flat = [(c, kind, t) for c in classes for kind in ("positive", "negative")
            for t in sets[c][kind]]
    temb = text_embeddings(vlm, [t for _, _, t in flat], text_encoder)
    pos = np.stack([_ensemble(temb[[i for i, f in enumerate(flat) if f[0] == c and
                                    f[1] == "positive"]]) for c in classes])
    neg = np.stack([_ensemble(temb[[i for i, f in enumerate(flat) if f[0] == c and
                                    f[1] == "negative"]]) for c in classes])
    res = zeroshot_from_embeddings(cemb, labels, pos, neg, classes, _logit_scale(vlm.model))
    scores, multi = res.pop("scores"), res.pop("multiclass_probs")
    res.update({"model": vlm.name, "organ": vlm.organ, "split": split,
                "modality": modality or "mean of available modalities",
                "n_prompts": {c: {k: len(v) for k, v in sets[c].items()} for c in classes}})
    if out_dir is not None:
        out = Path(out_dir)
        write_json({**res, "prompts": sets}, out / "zeroshot.json")
        import csv

        with (out / "scores.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "label", "predicted"] + [f"p_{c}" for c in classes])
            for c, s, m in zip(cases, scores, multi):
                w.writerow([c.case_id, c.label, classes[int(m.argmax())]]
                           + [f"{x:.6f}" for x in s])
    return res
