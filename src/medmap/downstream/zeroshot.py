"""Zero-shot abnormality classification with text prompts, CLIP-standard, report-free.

Prompts come from the class-knowledge file (:mod:`medmap.text.knowledge`, the same file MedMAP's
CSA reads): per modality, each class's *appearance* sentences, in the reports' language; per
organ, each class's *diagnosis-name* prompts (name templates x names). A prompt set is
ensembled CLIP-style: the mean of its L2-normalised projected text embeddings (``text_proj``
over the frozen encoder), re-normalised.

Scores, with ``s`` the model's learned ``logit_scale`` (1/0.07 if it has none):

* per modality ``m`` (each expert with its modality's prompts):
  ``z_m[k] = s * cos(v_m, a_{m,k})`` for the case's volume embedding ``v_m``;
* appearance, fused over the modalities present: ``z_app = mean_m z_m`` (a product of
  per-modality softmax experts up to normalisation -- missing modalities are left out);
* names (case-level, needs case-level alignment in pre-training): ``z_name[k] =
  s * cos(v_case, n_k)`` with ``v_case`` the mean of the case's normalised modality embeddings;
* ``prompts="both"`` (default): ``z = (z_app + z_name) / 2``; ``"appearance"`` / ``"names"``:
  that one alone. Probabilities ``softmax(z)`` over classes.

Headline: multi-class one-vs-rest macro AUC with a 95% bootstrap CI, and accuracy
(:func:`medmap.metrics.full_metrics`); per-modality AUCs beside it. ``score="posneg"`` keeps the
old per-class option: ``softmax(s * [cos(v_case, n_k), cos(v_case, not-n_k)])`` against the
negated name prompts (a class-independent negation direction makes its macro AUC ~0.5 by
construction; it is not the headline).

Example:
    >>> from medmap.downstream.zeroshot import zeroshot
    >>> res = zeroshot("runs/pretrain/model", "sim/manifest.jsonl", split="test")  # doctest: +SKIP
    >>> res["auc"], res["ci"], res["accuracy"]                                       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medmap.config import UserError
from medmap.data.manifest import Manifest
from medmap.data.vocab import get_organ
from medmap.downstream.common import write_json
from medmap.downstream.features import case_embeddings, text_embeddings, volume_embeddings
from medmap.downstream.vlm import LoadedVLM, VolumeItem, load_vlm

__all__ = ["zeroshot", "PromptBank", "prompt_bank", "zeroshot_logits", "zeroshot_from_logits",
           "per_class_auc", "logit_scale_of"]

PromptMode = Literal["both", "appearance", "names"]


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _ensemble(emb: np.ndarray) -> np.ndarray:
    """(P, d) projected prompt embeddings -> (d,) the normalised mean of the normalised ones."""
    return _norm(_norm(emb).mean(0))


class PromptBank:
    """Ensembled, normalised prompt embeddings in the model's shared space.

    ``appearance`` (M, C, d) per modality and class; ``names`` / ``negatives`` (C, d);
    ``texts`` the prompts used (for the output file).
    """

    def __init__(self, appearance: np.ndarray, names: np.ndarray, negatives: np.ndarray | None,
                 texts: dict[str, Any]):
        self.appearance, self.names, self.negatives, self.texts = appearance, names, negatives, texts


class _RandomText:
    """The language-removed control: each text's frozen embedding replaced by a fixed random
    vector of the same norm."""

    def __init__(self, encoder, seed: int = 0):
        self.encoder, self.seed = encoder, seed

    def encode(self, texts):
        from medmap.train.data import random_like

        return random_like(torch.as_tensor(self.encoder.encode(list(texts))).float(), self.seed)


def prompt_bank(vlm: LoadedVLM, knowledge=None, text_encoder=None,
                language: Literal["real", "random"] = "real") -> PromptBank:
    """Embed the class-knowledge prompts of ``vlm``'s organ and modalities (``knowledge``: a
    :class:`~medmap.text.knowledge.ClassKnowledge`, a path, or None for the shipped file).
    ``language="random"``: every prompt's frozen embedding is replaced by a fixed random vector
    of the same norm (the control that removes the language)."""
    from medmap.text.knowledge import ClassKnowledge, load_class_knowledge

    kn = knowledge if isinstance(knowledge, ClassKnowledge) else \
        load_class_knowledge(knowledge, vlm.organ)
    mods, classes = vlm.modalities, list(kn.classes)
    app = {m: kn.appearance_prompts(m) for m in mods}
    names, negs = kn.name_prompts(), kn.negative_prompts()
    flat = ([t for m in mods for c in classes for t in app[m][c]]
            + [t for c in classes for t in names[c]] + [t for c in classes for t in negs[c]])
    if language == "random":
        text_encoder = _RandomText(text_encoder if text_encoder is not None
                                   else vlm.text_encoder())
    emb = text_embeddings(vlm, flat, text_encoder)                    # (P, d) normalised
    i = 0

    def take(n: int) -> np.ndarray:
        nonlocal i
        out = emb[i:i + n]
        i += n
        return out

    appearance = np.stack([np.stack([_ensemble(take(len(app[m][c]))) for c in classes])
                           for m in mods])                            # (M, C, d)
    name_emb = np.stack([_ensemble(take(len(names[c]))) for c in classes])        # (C, d)
    neg_emb = (np.stack([_ensemble(take(len(negs[c]))) for c in classes])
               if all(negs[c] for c in classes) else None)
    return PromptBank(appearance, name_emb, neg_emb,
                      {"appearance": app, "names": names, "negatives": negs})


def logit_scale_of(model) -> float:
    ls = getattr(model, "logit_scale", None)
    if isinstance(ls, torch.Tensor):
        return float(ls.detach().float().exp().clamp(max=100.0))
    return 1 / 0.07


def zeroshot_logits(items: list[VolumeItem], vol_emb: np.ndarray, bank: PromptBank,
                    scale: float, prompts: PromptMode = "both",
                    ) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """Per case: ``(cases, logits (N, C), per-modality logits (M, N, C) with NaN where a
    modality is absent, case embeddings (N, d))``; see the module doc for the fusion."""
    cases, cemb = case_embeddings(items, vol_emb)                     # (N, d)
    row = {c.case_id: i for i, c in enumerate(cases)}
    M, C = bank.appearance.shape[:2]
    per = np.full((M, len(cases), C), np.nan)
    for it, v in zip(items, _norm(vol_emb)):
        per[it.modality_index, row[it.case.case_id]] = scale * bank.appearance[it.modality_index] @ v
    app = np.nanmean(per, axis=0)                                     # (N, C) mean over present
    name = scale * cemb @ bank.names.T                                # (N, C)
    z = {"both": (app + name) / 2, "appearance": app, "names": name}[prompts]
    return cases, z, per, cemb


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


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def zeroshot_from_logits(labels: np.ndarray, logits: np.ndarray, classes: list[str],
                         n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The headline metrics of class logits (N, C): ``auc`` (macro one-vs-rest; binary AUC for
    two classes), ``ci`` (95% bootstrap), ``accuracy``, ``balanced_accuracy``, ``per_class_auc``,
    ``roc`` (per class fpr / tpr) and ``probs`` (N, C)."""
    from medmap.metrics import full_metrics

    probs = _softmax(np.asarray(logits, float))
    labels = np.asarray(labels).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = full_metrics(labels, probs, classes, n_boot=n_boot, seed=seed)
    per, _ = per_class_auc(labels, probs, classes)
    return {"n": int(len(labels)), "classes": list(classes), "auc": m["auc"],
            "ci": m["ci"]["auc"], "accuracy": m["accuracy"],
            "accuracy_ci": m["ci"]["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "per_class_auc": per, "roc": m["roc"], "chance_accuracy": 1.0 / len(classes),
            "probs": probs}


def zeroshot(model: str | Path | LoadedVLM | None, manifest: Manifest | str | Path,
             split: str | None = "test", knowledge: str | Path | Any = None,
             out_dir: str | Path | None = None, *, prompts: PromptMode = "both",
             score: Literal["softmax", "posneg"] = "softmax", text_encoder=None, loader=None,
             cache_dir: str | Path | None = None, batch_size: int = 4,
             device: str | None = None, experiment=None, seed: int = 0,
             n_boot: int = 1000, language: Literal["real", "random"] = "real") -> dict[str, Any]:
    """Zero-shot classification of ``split``'s labelled cases (see the module doc).

    ``model``: a model folder, a :class:`LoadedVLM`, or None (no pre-training; needs
    ``experiment``). ``knowledge``: the class-knowledge file (None: the shipped one).
    ``language="random"``: the control with random prompt embeddings of the same norm. Writes
    ``zeroshot.json`` (metrics, prompts used) and ``scores.csv`` (per case probabilities) to
    ``out_dir`` when given; returns the metrics (``probs`` left out).
    """
    vlm = load_vlm(model, experiment=experiment, device=device, seed=seed)
    items = [it for it in vlm.volume_items(manifest, split) if it.case.label is not None]
    if not items:
        raise UserError(f"no labelled {vlm.organ} case in split {split!r}; zero-shot "
                        "classification needs labels to score (--split)")
    bank = prompt_bank(vlm, knowledge, text_encoder, language)
    classes = list(get_organ(vlm.organ).classes)
    emb = volume_embeddings(vlm, items, loader if loader is not None else vlm.loader(cache_dir),
                            batch_size)
    scale = logit_scale_of(vlm.model)
    cases, z, _, cemb = zeroshot_logits(items, emb, bank, scale, prompts)
    labels = np.array([c.label_index for c in cases])
    res = zeroshot_from_logits(labels, z, classes, n_boot, seed)
    res.update({"model": vlm.name, "organ": vlm.organ, "split": split, "prompts": prompts,
                "language": language,
                "score": score, "logit_scale": scale,
                "fusion": "mean of per-modality appearance logits over the present modalities"
                          + (", averaged with the case-level name logits" if prompts == "both"
                             else "")})
    # per-modality and per-prompt-kind AUCs beside the headline
    res["per_modality_auc"] = {}
    for mi, m in enumerate(vlm.modalities):
        sel = [i for i, it in enumerate(items) if it.modality_index == mi]
        if not sel:
            continue
        lab = np.array([items[i].case.label_index for i in sel])
        zz = scale * _norm(emb[sel]) @ bank.appearance[mi].T
        res["per_modality_auc"][m] = per_class_auc(lab, _softmax(zz), classes)[1]
    for kind in ("appearance", "names"):
        res[f"{kind}_auc"] = zeroshot_from_logits(
            labels, zeroshot_logits(items, emb, bank, scale, kind)[1], classes, 0)["auc"]
    if score == "posneg":
        if bank.negatives is None:
            raise UserError("score 'posneg' needs negative_templates in the class-knowledge file")
        sp, sn = cemb @ bank.names.T, cemb @ bank.negatives.T           # (N, C)
        pn = _softmax(scale * np.stack([sp, sn], -1))[..., 0]
        res["posneg_per_class_auc"], res["posneg_macro_auc"] = per_class_auc(labels, pn, classes)
    probs = res.pop("probs")
    if out_dir is not None:
        out = Path(out_dir)
        write_json({**res, "prompts_used": bank.texts}, out / "zeroshot.json")
        with (out / "scores.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "label", "predicted"] + [f"p_{c}" for c in classes])
            for c, p in zip(cases, probs):
                w.writerow([c.case_id, c.label, classes[int(p.argmax())]]
                           + [f"{x:.6f}" for x in p])
    res["labels"], res["probs"] = labels.tolist(), probs.tolist()
    return res
