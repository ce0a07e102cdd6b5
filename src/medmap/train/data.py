"""Glue between datasets, the frozen text encoder and the Lightning loop.

Reports are encoded once (frozen encoder, on-disk cache) into a :class:`TextTable`; collators
attach each item's text embedding, so the training loop never runs the text model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from medmap.config import UserError
from medmap.data.datasets import collate_cases, collate_pairs
from medmap.data.vocab import GLOBAL_REPORT
from medmap.text.prompts import class_prompt
from medmap.train.engine import EpochShuffleSampler, GroupedBatchSampler


class TextTable:
    """Frozen embeddings of a fixed set of texts: ``table[text] -> (text_dim,)``."""

    def __init__(self, encoder, texts: Iterable[str]):
        uniq = sorted(set(texts))
        if not uniq:
            raise UserError("no report or prompt text to encode; check the manifest's reports")
        emb = encoder.encode(uniq).float().cpu()               # (T, text_dim)
        self.index = {t: i for i, t in enumerate(uniq)}
        self.embeddings = emb
        self.dim = emb.shape[1]

    def __getitem__(self, text: str) -> torch.Tensor:
        return self.embeddings[self.index[text]]

    def stack(self, texts: Sequence[str]) -> torch.Tensor:
        return self.embeddings[[self.index[t] for t in texts]]  # (B, text_dim)

    def randomized(self, seed: int) -> TextTable:
        """The same texts with every embedding replaced by a fixed random vector of the same
        norm (the language-removed control)."""
        out = object.__new__(TextTable)
        out.index, out.dim = self.index, self.dim
        out.embeddings = random_like(self.embeddings, seed)
        return out


def random_like(emb: torch.Tensor, seed: int) -> torch.Tensor:
    """Gaussian random vectors with the norms of ``emb``'s last-axis vectors (seeded)."""
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(emb.shape, generator=g)
    return r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12) * emb.norm(dim=-1, keepdim=True)


def case_text(reports: dict[str, str], label: int, organ: str, classes: Sequence[str],
              modalities: Sequence[str]) -> str:
    """The text ``f_t`` is computed from: the global report, else the modality reports joined
    in modality order, else the class prompt (training only)."""
    if reports.get(GLOBAL_REPORT, "").strip():
        return reports[GLOBAL_REPORT]
    parts = [reports[m] for m in modalities if reports.get(m, "").strip()]
    if parts:
        return " ".join(parts)
    if label < 0:
        raise UserError("a training case has neither a report nor a label")
    return class_prompt(classes[label], organ)


class PairCollator:
    """Collate (volume, report) pairs and attach ``text`` and ``model_modality``."""

    def __init__(self, table: TextTable, modalities: Sequence[str]):
        self.table, self.modalities = table, list(modalities)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        b = collate_pairs(items)
        b["text"] = self.table.stack(b["report"])
        b["model_modality"] = torch.tensor([self.modalities.index(m) for m in b["modality"]])
        return b


def modality_reports(table: TextTable, reports: Sequence[dict[str, str]],
                     modalities: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each case's per-sequence report embeddings ``(B, M, T)`` (zeros where a sequence has no
    report) and the mask of those that exist ``(B, M)``."""
    B, M = len(reports), len(modalities)
    emb = torch.zeros(B, M, table.dim)
    mask = torch.zeros(B, M, dtype=torch.bool)
    for i, r in enumerate(reports):
        for j, m in enumerate(modalities):
            t = r.get(m)
            if isinstance(t, str) and t.strip() and t in table.index:
                emb[i, j], mask[i, j] = table[t], True
    return emb, mask


def global_reports(table: TextTable, reports: Sequence[dict[str, str]]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each case's global-impression embedding ``(B, T)`` and whether it has one ``(B,)``."""
    emb = torch.zeros(len(reports), table.dim)
    mask = torch.zeros(len(reports), dtype=torch.bool)
    for i, r in enumerate(reports):
        t = r.get(GLOBAL_REPORT)
        if isinstance(t, str) and t.strip() and t in table.index:
            emb[i], mask[i] = table[t], True
    return emb, mask


class CaseCollator:
    """Collate cases and attach ``text`` (the case text embedding, for the KL term; training
    batches only, ``with_case_text``) and, with ``with_modality_reports``, ``reports_emb`` /
    ``report_mask`` (the per-sequence report embeddings ``csa_text="report"`` reads)."""

    def __init__(self, table: TextTable | None, organ: str, classes: Sequence[str],
                 modalities: Sequence[str], with_modality_reports: bool = False,
                 with_case_text: bool = True):
        self.table, self.organ = table, organ
        self.classes, self.modalities = list(classes), list(modalities)
        self.with_modality_reports = with_modality_reports
        self.with_case_text = with_case_text        # False: validation (no KL target needed)

    def texts(self, b: dict[str, Any]) -> list[str]:
        return [case_text(r, int(y), self.organ, self.classes, self.modalities)
                for r, y in zip(b["reports"], b["label"].tolist())]

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        b = collate_cases(items)
        if self.table is not None and self.with_case_text and (b["label"] >= 0).all():
            b["text"] = self.table.stack(self.texts(b))
        if self.with_modality_reports:
            b["reports_emb"], b["report_mask"] = modality_reports(self.table, b["reports"],
                                                                  self.modalities)
        return b


class CasePairCollator:
    """Collate cases for case-level pre-training: ``text`` (B, M, T) per-sequence report
    embeddings with ``text_mask`` (B, M), and ``global_text`` (B, T) with ``global_mask``."""

    def __init__(self, table: TextTable, modalities: Sequence[str]):
        self.table, self.modalities = table, list(modalities)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        b = collate_cases(items)
        b["text"], b["text_mask"] = modality_reports(self.table, b["reports"], self.modalities)
        b["global_text"], b["global_mask"] = global_reports(self.table, b["reports"])
        return b


class StageDataModule(L.LightningDataModule):
    """Train / val loaders with the epoch-seeded, rank-sharded sampler (exact resume, DDP)."""

    def __init__(self, train: Dataset, val: Dataset | None, collate, batch_size: int,
                 num_workers: int = 0, seed: int = 0, val_collate=None,
                 train_groups: list[int] | None = None):
        super().__init__()
        self.train_groups = train_groups
        self.train_ds, self.val_ds = train, val
        self.collate, self.val_collate = collate, val_collate or collate
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        # Workers are not kept across epochs: every epoch's iterator draws its workers' base
        # seed from the global RNG, with or without workers, so dropout and the other global
        # draws (and hence the weights) do not depend on ``num_workers``. Persistent workers
        # would draw it once per run. Forked workers start in well under a second.
        rank, world = self._rank_world()
        if self.train_groups is not None:
            bs = GroupedBatchSampler(self.train_groups, self.batch_size, self.seed, rank, world)
            return DataLoader(self.train_ds, batch_sampler=bs, collate_fn=self.collate,
                              num_workers=self.num_workers)
        sampler = EpochShuffleSampler(len(self.train_ds), self.seed, True, rank, world)
        return DataLoader(self.train_ds, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=self.collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_ds is None or len(self.val_ds) == 0:
            return []
        rank, world = self._rank_world()
        sampler = EpochShuffleSampler(len(self.val_ds), 0, False, rank, world)
        return DataLoader(self.val_ds, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=self.val_collate, num_workers=self.num_workers)
