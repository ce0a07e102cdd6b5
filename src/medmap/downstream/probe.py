"""Abnormality classification from pre-trained features: linear probe and full fine-tuning.

Case feature: the mean over the case's available modalities of each volume's global embedding
(``encode_image``); missing modalities are left out of the mean, never zero-filled.

* ``linear``: frozen encoder, L2-normalised modality embeddings averaged and re-normalised
  (:func:`~medmap.downstream.common.case_embeddings`), then scikit-learn's ``StandardScaler`` +
  ``LogisticRegression`` (lbfgs, multinomial, ``C``) fit on the train split;
* ``finetune``: a copy of the whole model (the caller's is untouched) with a linear head on the
  mean of the unnormalised embeddings, cross-entropy, AdamW with warm-up + cosine (the encoder
  at ``encoder_lr_ratio`` x the head's learning rate), a few epochs.

Both report accuracy, balanced accuracy and (macro one-vs-rest) AUC on the evaluation split via
:func:`medmap.metrics.classification_metrics`.

Example:
    >>> from medmap.downstream.probe import probe
    >>> probe("runs/pretrain/model", "sim/manifest.jsonl", mode="linear")["test"]["auc"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmap.config import UserError
from medmap.data.manifest import Manifest
from medmap.data.vocab import get_organ
from medmap.downstream.common import write_json
from medmap.downstream.features import case_embeddings, volume_embeddings
from medmap.downstream.vlm import LoadedVLM, load_vlm
from medmap.train.loop import fit
from medmap.train.engine import OptimConfig

__all__ = ["probe", "linear_probe", "finetune_probe", "FinetuneClassifier"]


def _metrics(labels: np.ndarray, probs: np.ndarray, n_boot: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    from medmap.metrics import _percentile_ci, bootstrap_scores, classification_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = classification_metrics(labels, probs)
        acc, auc = bootstrap_scores(labels, probs, probs.argmax(1) == labels, n_boot, seed)
    return {**{k: float(v) for k, v in m.items()}, "n": int(len(labels)),
            "ci": {"accuracy": _percentile_ci(acc), "auc": _percentile_ci(auc)}}


def _features(vlm: LoadedVLM, manifest, split: str, loader, batch_size: int):
    items = [it for it in vlm.volume_items(manifest, split) if it.case.label is not None]
    if not items:
        return [], np.zeros((0, int(vlm.model.cfg.embed_dim)), np.float32), np.zeros(0, int)
    cases, x = case_embeddings(items, volume_embeddings(vlm, items, loader, batch_size))
    return cases, x, np.array([c.label_index for c in cases])


def linear_probe(vlm: LoadedVLM, manifest, train_split: str = "train", eval_split: str = "test",
                 loader=None, C: float = 1.0, batch_size: int = 4) -> dict[str, Any]:
    """Frozen features + logistic regression (see module doc)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    loader = loader if loader is not None else vlm.loader()
    K = len(get_organ(vlm.organ).classes)
    _, xtr, ytr = _features(vlm, manifest, train_split, loader, batch_size)
    ecases, xte, yte = _features(vlm, manifest, eval_split, loader, batch_size)
    if len(ytr) == 0 or len(np.unique(ytr)) < 2:
        raise UserError(f"the linear probe needs labelled {train_split!r} cases of at least two "
                        f"classes (got {len(ytr)} case(s), classes {sorted(set(ytr.tolist()))})")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    clf.fit(xtr, ytr)
    res: dict[str, Any] = {"mode": "linear", "n_train": int(len(ytr)), "C": C}
    if len(yte):
        probs = np.zeros((len(yte), K))
        probs[:, clf.classes_] = clf.predict_proba(xte)
        res[eval_split] = _metrics(yte, probs)
        res["predictions"] = {c.case_id: int(p.argmax()) for c, p in zip(ecases, probs)}
    else:
        res[eval_split] = None
    return res


class FinetuneClassifier(nn.Module):
    """A vision-language model's encoders + a linear head on the case's global feature."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model = model
        self.head = nn.Linear(int(model.cfg.embed_dim), num_classes)

    def forward(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """images (B, M, 1, D, H, W), present (B, M) -> logits (B, K)."""
        B, M = present.shape
        feats = images.new_zeros(B, int(self.model.cfg.embed_dim))
        for m in range(M):
            rows = present[:, m].nonzero(as_tuple=True)[0]
            if rows.numel():
                e = self.model.encode_image(images[rows, m], torch.full_like(rows, m))
                feats = feats.index_add(0, rows, e)
        feats = feats / present.sum(1, keepdim=True).clamp_min(1).to(feats.dtype)
        return self.head(feats)


def finetune_probe(vlm: LoadedVLM, manifest, train_split: str = "train",
                   eval_split: str = "test", loader=None, epochs: int = 5, batch_size: int = 4,
                   lr: float = 1e-3, encoder_lr_ratio: float = 0.1, seed: int = 0,
                   ) -> dict[str, Any]:
    """Full fine-tuning of a copy of the model with a linear head (see module doc)."""
    from medmap.data.datasets import CaseDataset, collate_cases

    loader = loader if loader is not None else vlm.loader()
    K = len(get_organ(vlm.organ).classes)
    mods = vlm.modalities
    tr = CaseDataset(vlm.cases(manifest, train_split, labelled=True), loader, modalities=mods,
                     with_reports=False)
    te = CaseDataset(vlm.cases(manifest, eval_split, labelled=True), loader, modalities=mods,
                     with_reports=False)
    if len(tr) == 0:
        raise UserError(f"no labelled {vlm.organ} case in split {train_split!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = FinetuneClassifier(copy.deepcopy(vlm.model), K).to(vlm.device)
    dev = vlm.device
    loss_fn = nn.CrossEntropyLoss()

    def step(b):
        return loss_fn(clf(b["images"].to(dev), b["present"].to(dev)), b["label"].to(dev))

    optim = OptimConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        warmup_epochs=min(1.0, epochs / 5), weight_decay=0.01)
    losses = fit(step, tr, collate_cases, [(clf.head, 1.0), (clf.model, encoder_lr_ratio)],
                 optim, train_modules=[clf])
    res: dict[str, Any] = {"mode": "finetune", "n_train": len(tr), "epochs": epochs,
                           "train_loss": losses}
    if len(te):
        probs, labels, ids = [], [], []
        with torch.no_grad():
            for s in range(0, len(te), batch_size):
                b = collate_cases([te[i] for i in range(s, min(len(te), s + batch_size))])
                probs.append(clf(b["images"].to(dev), b["present"].to(dev)).softmax(-1).cpu())
                labels.append(b["label"])
                ids += b["case_id"]
        p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
        res[eval_split] = _metrics(y, p)
        res["predictions"] = {c: int(q.argmax()) for c, q in zip(ids, p)}
    else:
        res[eval_split] = None
    return res


def probe(model: str | Path | LoadedVLM | None, manifest: Manifest | str | Path,
          out_dir: str | Path | None = None, *, mode: str = "linear", train_split: str = "train",
          eval_split: str = "test", epochs: int = 5, batch_size: int = 4, lr: float = 1e-3,
          C: float = 1.0, seed: int = 0, loader=None, cache_dir: str | Path | None = None,
          device: str | None = None, experiment=None) -> dict[str, Any]:
    """Classification by ``mode`` ``"linear"`` (probe) or ``"finetune"``; writes
    ``probe-<mode>.json`` to ``out_dir`` when given."""
    if mode not in ("linear", "finetune"):
        raise UserError(f"mode must be 'linear' or 'finetune', got {mode!r}")
    vlm = load_vlm(model, experiment=experiment, device=device, seed=seed)
    if loader is None:
        loader = vlm.loader(cache_dir)
    if mode == "linear":
        res = linear_probe(vlm, manifest, train_split, eval_split, loader, C, batch_size)
    else:
        res = finetune_probe(vlm, manifest, train_split, eval_split, loader, epochs, batch_size,
                             lr, seed=seed)
    res.update({"model": vlm.name, "organ": vlm.organ, "classes": list(get_organ(vlm.organ).classes),
                "train_split": train_split, "eval_split": eval_split})
    if out_dir is not None:
        write_json(res, Path(out_dir) / f"probe-{mode}.json")
    return res
