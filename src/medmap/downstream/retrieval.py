"""Report-to-volume and volume-to-report retrieval (MG-3D's cross-modal retrieval task).

Global features: ``encode_image`` of a volume and ``text_proj`` of its report's frozen text
embedding, both L2-normalised; similarity = cosine. Over a split, both directions each:

* ``per_sequence`` (the headline, how the experts were pre-trained): one gallery per MRI
  sequence -- its volumes that have their own report; Recall@K averaged over the sequences
  (``pair.per_modality`` holds each sequence's own numbers);
* ``case``: one volume feature per case (mean of its normalised modality embeddings,
  re-normalised) against the case report (the ``global`` impression, else the modality reports
  joined);
* ``pair`` (secondary): every sequence's pairs pooled into one gallery.

Rank of the match = 1 + the number of gallery items scored strictly higher (ties with the match
count in its favour, so identical reports are not penalised). ``R@K`` = fraction of queries whose
match ranks <= min(K, N), printed beside its chance level ``chance@K = min(K, N) / N`` and a 95%
bootstrap CI over the queries (``ci@K``); also the median and mean rank.

Example:
    >>> from medmap.downstream.retrieval import retrieval
    >>> res = retrieval("runs/pretrain/model", "sim/manifest.jsonl", split="test")  # doctest: +SKIP
    >>> res["per_sequence"]["report_to_volume"]["R@5"]                                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmap.config import UserError
from medmap.data.manifest import Manifest
from medmap.downstream.common import write_json
from medmap.downstream.features import (
    case_embeddings,
    case_report,
    text_embeddings,
    volume_embeddings,
)
from medmap.downstream.vlm import LoadedVLM, load_vlm

__all__ = ["retrieval", "retrieval_metrics", "match_ranks", "recall_at_k", "chance_at_k",
           "per_sequence_summary", "per_sequence_ci", "DEFAULT_KS"]

DEFAULT_KS = (1, 5, 10, 50)


def match_ranks(sim: np.ndarray) -> np.ndarray:
    """1-based rank of the diagonal entry of each row of a square similarity matrix
    (queries x gallery, query ``i`` matches gallery item ``i``)."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"expected a square similarity matrix, got {sim.shape}")
    diag = np.diag(sim)[:, None]
    return 1 + (sim > diag).sum(1)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose match ranks within ``min(k, N)``."""
    ranks = np.asarray(ranks)
    return float((ranks <= min(k, len(ranks))).mean()) if len(ranks) else float("nan")


def _recall_ci(ranks: np.ndarray, k: int, n_boot: int = 500, seed: int = 0) -> list | None:
    """95% percentile bootstrap CI of Recall@K over the queries (the gallery fixed)."""
    if len(ranks) < 2:
        return None
    hit = (np.asarray(ranks) <= min(k, len(ranks))).astype(float)
    idx = np.random.default_rng(seed).integers(0, len(hit), (n_boot, len(hit)))
    boots = hit[idx].mean(1)
    return [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def chance_at_k(n: int, k: int) -> float | None:
    """Recall@K of a random ranking over a gallery of ``n``: ``min(K, n) / n``."""
    return min(k, n) / n if n else None


def per_sequence_summary(per_mod: dict[str, Any], ks: Sequence[int]) -> dict[str, Any]:
    """The headline: per-sequence galleries' Recall@K averaged over the sequences, with the
    chance level averaged the same way, for both directions, and the mean gallery size."""
    out: dict[str, Any] = {"sequences": list(per_mod)}
    for d in ("report_to_volume", "volume_to_report"):
        out[d] = {}
        for k in ks:
            for key in (f"R@{k}", f"chance@{k}"):
                vals = [m[d][key] for m in per_mod.values() if m[d].get(key) is not None]
                out[d][key] = float(np.mean(vals)) if vals else None
    out["gallery"] = float(np.mean([m["n"] for m in per_mod.values()])) if per_mod else 0.0
    return out


def per_sequence_ci(hits: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int = 500,
                    seed: int = 0) -> list | None:
    """95% percentile bootstrap CI of the per-sequence Recall@K averaged over the sequences:
    ``hits[m] = (case_index, hit)`` per query of sequence ``m``. Cases are resampled (a
    case's queries in every sequence go together), each sequence's recall is the weighted mean
    of its queries' hits under the resample, then averaged over the sequences."""
    if not hits:
        return None
    n_cases = 1 + max(int(c.max()) for c, _ in hits.values() if len(c))
    if n_cases < 2:
        return None
    draws = np.random.default_rng(seed).integers(0, n_cases, (n_boot, n_cases))
    counts = np.zeros((n_boot, n_cases))                     # (B, cases): times drawn
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    recalls = []
    for case, hit in hits.values():
        w = counts[:, case]                                  # (B, queries of the sequence)
        tot = w.sum(1)
        recalls.append(np.where(tot > 0, (w * hit).sum(1) / np.maximum(tot, 1), np.nan))
    boots = np.nanmean(np.stack(recalls), 0)
    return [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def retrieval_metrics(sim: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Both directions from ``sim`` (reports x volumes): ``report_to_volume`` uses the rows,
    ``volume_to_report`` the columns. Each: ``R@K`` for every K (capped at N), median and mean
    rank, ``n``."""
    sim = np.asarray(sim, dtype=np.float64)

    def one(s: np.ndarray) -> dict[str, Any]:
        r = match_ranks(s)
        out: dict[str, Any] = {f"R@{k}": recall_at_k(r, k) for k in ks}
        out.update({f"chance@{k}": chance_at_k(len(r), k) for k in ks})
        out.update({f"ci@{k}": _recall_ci(r, k) for k in ks})
        out.update({"median_rank": float(np.median(r)) if len(r) else None,
                    "mean_rank": float(np.mean(r)) if len(r) else None, "n": int(len(r))})
        return out

    return {"report_to_volume": one(sim), "volume_to_report": one(sim.T), "n": int(len(sim))}


def retrieval(model: str | Path | LoadedVLM | None, manifest: Manifest | str | Path,
              split: str = "test", out_dir: str | Path | None = None, *,
              ks: Sequence[int] = DEFAULT_KS, text_encoder=None, loader=None,
              cache_dir: str | Path | None = None, batch_size: int = 4,
              device: str | None = None, experiment=None, seed: int = 0) -> dict[str, Any]:
    """Retrieval metrics of ``split`` at pair and case level (see module doc); writes
    ``retrieval.json`` to ``out_dir`` when given."""
    vlm = load_vlm(model, experiment=experiment, device=device, seed=seed)
    items = vlm.volume_items(manifest, split)
    paired = [i for i, it in enumerate(items) if it.report is not None]
    if not paired:
        raise UserError(f"no {vlm.organ} volume with a report in split {split!r}; retrieval "
                        "needs per-modality reports")
    if loader is None:
        loader = vlm.loader(cache_dir)
    vemb = volume_embeddings(vlm, items, loader, batch_size)
    cases, cemb = case_embeddings(items, vemb)
    creports = [case_report(c, vlm.modalities) for c in cases]
    keep = [i for i, r in enumerate(creports) if r is not None]
    texts = [items[i].report for i in paired] + [creports[i] for i in keep]
    temb = text_embeddings(vlm, texts, text_encoder)
    t_pair, t_case = temb[:len(paired)], temb[len(paired):]
    v_pair = vemb[paired]
    res: dict[str, Any] = {"model": vlm.name, "organ": vlm.organ, "split": split,
                           "ks": list(ks)}
    res["pair"] = retrieval_metrics(t_pair @ v_pair.T, ks)
    per_mod: dict[str, Any] = {}
    mods = np.array([items[i].modality for i in paired])
    case_of = {c: j for j, c in enumerate(dict.fromkeys(items[i].case.case_id for i in paired))}
    qcase = np.array([case_of[items[i].case.case_id] for i in paired])
    ranks: dict[str, np.ndarray] = {}
    for m in vlm.modalities:
        sel = np.nonzero(mods == m)[0]
        if len(sel):
            sim = t_pair[sel] @ v_pair[sel].T
            per_mod[m] = retrieval_metrics(sim, ks)
            ranks[m] = (qcase[sel], match_ranks(np.asarray(sim, dtype=np.float64)))
    res["pair"]["per_modality"] = per_mod
    res["per_sequence"] = per_sequence_summary(per_mod, ks)
    for k in ks:       # the headline's CI: cases resampled, every sequence's queries together
        res["per_sequence"]["report_to_volume"][f"ci@{k}"] = per_sequence_ci(
            {m: (c, (r <= min(k, len(r))).astype(float)) for m, (c, r) in ranks.items()})
    res["case"] = retrieval_metrics(t_case @ cemb[keep].T, ks) if keep else None
    if out_dir is not None:
        write_json(res, Path(out_dir) / "retrieval.json")
    return res
