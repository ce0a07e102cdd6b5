"""Embeddings of volumes, cases and texts in a vision-language model's shared space.

* :func:`volume_embeddings` -- one global embedding per (case, modality) volume
  (``encode_image``, volumes batched per modality);
* :func:`case_embeddings` -- one per case: the mean of the case's L2-normalised modality
  embeddings, re-normalised (missing modalities are simply absent from the mean);
* :func:`text_embeddings` -- texts through the frozen text encoder and ``text_proj``.

Example:
    >>> emb = volume_embeddings(vlm, vlm.volume_items("cases.jsonl", "test"))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medmap.data.manifest import Case
from medmap.data.vocab import GLOBAL_REPORT
from medmap.downstream.vlm import LoadedVLM, VolumeItem

__all__ = ["volume_embeddings", "case_embeddings", "project_text", "text_embeddings",
           "case_report"]


def _batches(n: int, size: int) -> Iterable[range]:
    for s in range(0, n, size):
        yield range(s, min(n, s + size))


@torch.no_grad()
def volume_embeddings(vlm: LoadedVLM, items: Sequence[VolumeItem], loader=None,
                      batch_size: int = 4, normalize: bool = True) -> np.ndarray:
    """(len(items), embed_dim) float32: ``encode_image`` per volume, batched per modality;
    L2-normalised unless ``normalize=False``. ``loader``: anything with ``get(path, modality)``
    (default: the model's preprocessing, no disk cache)."""
    loader = loader if loader is not None else vlm.loader()
    model = vlm.model
    was_training = model.training
    model.eval()
    dev = vlm.device
    out = np.zeros((len(items), int(model.cfg.embed_dim)), np.float32)
    by_mod: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_mod.setdefault(it.modality_index, []).append(i)
    for m, rows in by_mod.items():
        for r in _batches(len(rows), batch_size):
            idx = [rows[j] for j in r]
            x = torch.stack([items[j].load(loader) for j in idx]).to(dev)
            e = model.encode_image(x, torch.full((len(idx),), m, dtype=torch.long, device=dev))
            e = F.normalize(e.float(), dim=-1) if normalize else e.float()
            out[idx] = e.cpu().numpy()
    model.train(was_training)
    return out


def case_embeddings(items: Sequence[VolumeItem], emb: np.ndarray,
                    modality: str | None = None) -> tuple[list[Case], np.ndarray]:
    """One embedding per case: the mean of its (normalised) modality embeddings, re-normalised;
    with ``modality`` only that modality's volume (cases without it are dropped)."""
    order: dict[str, int] = {}
    cases: list[Case] = []
    sums: list[np.ndarray] = []
    for it, e in zip(items, emb):
        if modality is not None and it.modality != modality:
            continue
        k = order.get(it.case.case_id)
        if k is None:
            order[it.case.case_id] = k = len(cases)
            cases.append(it.case)
            sums.append(np.zeros_like(e))
        sums[k] = sums[k] + e / max(np.linalg.norm(e), 1e-12)
    if not cases:
        return [], np.zeros((0, emb.shape[1] if emb.ndim == 2 else 0), np.float32)
    arr = np.stack(sums)
    arr /= np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
    return cases, arr.astype(np.float32)


@torch.no_grad()
def project_text(vlm: LoadedVLM, raw: torch.Tensor, normalize: bool = True) -> np.ndarray:
    """Frozen text-encoder embeddings (T, text_dim) -> the shared space via ``text_proj``."""
    proj = vlm.model.text_proj
    w = next(proj.parameters())
    t = proj(raw.to(w.device, w.dtype)).float()
    if normalize:
        t = F.normalize(t, dim=-1)
    return t.cpu().numpy().astype(np.float32)


def text_embeddings(vlm: LoadedVLM, texts: Sequence[str], text_encoder=None,
                    normalize: bool = True) -> np.ndarray:
    """(len(texts), embed_dim): the texts through the frozen text encoder and ``text_proj``.
    ``text_encoder``: anything with ``encode(list[str]) -> (T, text_dim)`` (default: the
    model's own)."""
    if not texts:
        return np.zeros((0, int(vlm.model.cfg.embed_dim)), np.float32)
    enc = text_encoder if text_encoder is not None else vlm.text_encoder()
    return project_text(vlm, torch.as_tensor(enc.encode(list(texts))).float(), normalize)


def case_report(case: Case, modalities: Sequence[str]) -> str | None:
    """A case-level report: the global report, else the modality reports joined in order."""
    g = case.reports.get(GLOBAL_REPORT)
    if isinstance(g, str) and g.strip():
        return g
    parts = [case.reports[m] for m in modalities
             if isinstance(case.reports.get(m), str) and case.reports[m].strip()]
    return " ".join(parts) if parts else None
