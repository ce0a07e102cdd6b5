"""Torch datasets over a manifest, reading volumes through the preprocessed-volume cache.

* :class:`ModalityPairDataset` - one item per (case, modality) with a report: image-report pairs
  for contrastive pre-training. Batch with :func:`collate_pairs`.
* :class:`CaseDataset` - one item per case with all its modalities (missing ones flagged in
  ``present``). Batch with :func:`collate_cases`.

Volumes are loaded lazily in ``__getitem__``; construction reads nothing but the manifest.

Example:
    >>> from torch.utils.data import DataLoader
    >>> from medmap.data.manifest import Manifest
    >>> from medmap.data.preprocess import PreprocessConfig, Preprocessor
    >>> cache = VolumeCache("cache/", Preprocessor(PreprocessConfig()))       # doctest: +SKIP
    >>> ds = CaseDataset(Manifest.load("cases.jsonl"), cache,
    ...                  modalities=["T1WI", "T2WI"], split="train")          # doctest: +SKIP
    >>> batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_cases)))  # doctest: +SKIP
    >>> batch["images"].shape, batch["present"].shape                          # doctest: +SKIP
    (torch.Size([2, 2, 1, 128, 128, 128]), torch.Size([2, 2]))

The cache (:class:`~medmap.data.cache.VolumeCache`) lives in :mod:`medmap.data.cache`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from medmap.config import UserError
from medmap.data.cache import VolumeCache
from medmap.data.manifest import Case, Manifest
from medmap.data.preprocess import Preprocessor
from medmap.data.vocab import GLOBAL_REPORT, get_organ

# ---- datasets -------------------------------------------------------------------------------
def _as_cache(loader: VolumeCache | Preprocessor) -> VolumeCache:
    if isinstance(loader, VolumeCache):
        return loader
    if isinstance(loader, Preprocessor):
        return VolumeCache(None, loader)
    raise TypeError(f"expected a VolumeCache or Preprocessor, got {type(loader).__name__}")


def _select_cases(
    source: Manifest | Iterable[Case], organ: str | None, split: str | None
) -> list[Case]:
    cases = source.resolved() if isinstance(source, Manifest) else list(source)
    return [c for c in cases
            if (organ is None or c.organ == organ) and (split is None or c.split == split)]


def _modality_index(case: Case, modality: str) -> int:
    mods = get_organ(case.organ).modalities
    if modality not in mods:
        raise UserError(
            f"case {case.case_id!r}: modality {modality!r} is not in organ {case.organ!r}'s "
            f"vocabulary ({', '.join(mods)}); map it with medmap.data.vocab.MODALITY_ALIASES"
        )
    return mods.index(modality)


def roi_path(case: Case, roi_mask: str | None) -> str | None:
    """The case's ROI (organ) mask path for ``PreprocessConfig.roi_mask``; ``None`` when unset.

    Raises ValueError naming the case and the field when the case has no such mask.
    """
    if roi_mask is None:
        return None
    path = case.masks.get(roi_mask)
    if not path:
        raise UserError(
            f"case {case.case_id!r}: masks.{roi_mask}: missing; preprocess.roi_mask crops every "
            f"volume to this organ mask, so add it to the case (or set preprocess.roi_mask to "
            "null)")
    return path


def _has_text(s: str | None) -> bool:
    return isinstance(s, str) and bool(s.strip())


class ModalityPairDataset(Dataset):
    """One item per (case, modality) that has a report for that modality.

    Args:
        source: a :class:`Manifest` (paths resolved against its folder) or a list of cases.
        loader: a :class:`VolumeCache` or a :class:`Preprocessor` (no disk cache).
        modalities: keep only these modalities (default: all of each case's).
        organ, split: keep only cases of this organ / split.
        use_global_report: for a modality with no report of its own, use the case's
            ``"global"`` report (otherwise the pair is skipped).
        append_global: append the case's ``"global"`` impression to each sequence's report (the
            MG-3D recipe trains on both; one text per volume keeps a batch free of duplicate
            images with different texts).

    Item: ``image`` (1, D, H, W) float32, ``modality`` str, ``modality_index`` int (index into
    the organ's :data:`~medmap.data.vocab.ORGANS` modality list), ``report`` str, ``case_id``.
    """

    def __init__(
        self,
        source: Manifest | Iterable[Case],
        loader: VolumeCache | Preprocessor,
        modalities: Sequence[str] | None = None,
        organ: str | None = None,
        split: str | None = None,
        *,
        use_global_report: bool = False,
        append_global: bool = False,
    ):
        self.cache = _as_cache(loader)
        self.use_global_report = use_global_report
        self.pairs: list[tuple[Case, str, int, str]] = []
        keep = None if modalities is None else set(modalities)
        for case in _select_cases(source, organ, split):
            for mod in case.modalities:
                if keep is not None and mod not in keep:
                    continue
                report = case.reports.get(mod)
                if not _has_text(report) and use_global_report:
                    report = case.reports.get(GLOBAL_REPORT)
                g = case.reports.get(GLOBAL_REPORT)
                if append_global and _has_text(report) and _has_text(g) and g != report:
                    report = f"{report.rstrip()} {g.strip()}"
                if _has_text(report):
                    self.pairs.append((case, mod, _modality_index(case, mod), report))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        case, mod, idx, report = self.pairs[i]
        return {
            "image": self.cache.get(case.modalities[mod], mod,
                                    roi_path(case, self.cache.cfg.roi_mask)),
            "modality": mod,
            "modality_index": idx,
            "report": report,
            "case_id": case.case_id,
        }


class CaseDataset(Dataset):
    """One item per case holding every requested modality that the case has.

    Args:
        source: a :class:`Manifest` or a list of cases.
        loader: a :class:`VolumeCache` or a :class:`Preprocessor`.
        modalities: the ordered modality list (``present`` and the collated ``images`` follow
            it); default: the organ's full vocabulary (requires ``organ``).
        organ, split: filters.
        with_reports: include ``reports`` (modality or ``"global"`` -> text).
        with_masks: include ``mask`` (1, D, H, W) preprocessed from ``case.masks[mask_key]``
            (``None`` when the case has none).
        mask_key: which mask to load (``"lesion"`` or a modality name; a mask keyed by a
            modality is resampled onto that modality's grid first).

    Cases with none of the requested modalities are skipped (listed in ``skipped``).
    Item: ``images`` dict modality -> (1, D, H, W), ``present`` bool (M,), ``label`` long
    scalar (-1 if unlabelled), ``reports`` dict, ``case_id``, ``modalities`` (the ordered list),
    and ``mask`` when ``with_masks``.
    """

    def __init__(
        self,
        source: Manifest | Iterable[Case],
        loader: VolumeCache | Preprocessor,
        modalities: Sequence[str] | None = None,
        organ: str | None = None,
        split: str | None = None,
        *,
        with_reports: bool = True,
        with_masks: bool = False,
        mask_key: str = "lesion",
    ):
        self.cache = _as_cache(loader)
        if modalities is None:
            if organ is None:
                raise ValueError(
                    "CaseDataset needs `modalities` (or `organ` to use its vocabulary)"
                )
            modalities = get_organ(organ).modalities
        self.modalities = tuple(modalities)
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise UserError(f"modalities must be a non-empty list without repeats, "
                            f"got {list(self.modalities)}")
        self.with_reports = with_reports
        self.with_masks = with_masks
        self.mask_key = mask_key
        self.cases: list[Case] = []
        self.skipped: list[str] = []
        for case in _select_cases(source, organ, split):
            if any(m in case.modalities for m in self.modalities):
                self.cases.append(case)
            else:
                self.skipped.append(case.case_id)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict[str, Any]:
        case = self.cases[i]
        present = [m in case.modalities for m in self.modalities]
        roi = roi_path(case, self.cache.cfg.roi_mask)
        images = {m: self.cache.get(case.modalities[m], m, roi) for m, p in
                  zip(self.modalities, present) if p}
        label = case.label_index
        item: dict[str, Any] = {
            "images": images,
            "present": torch.tensor(present, dtype=torch.bool),
            "label": torch.tensor(-1 if label is None else label, dtype=torch.long),
            "reports": {k: v for k, v in case.reports.items() if _has_text(v)}
            if self.with_reports else {},
            "case_id": case.case_id,
            "modalities": self.modalities,
        }
        if self.with_masks:
            mpath = case.masks.get(self.mask_key)
            ref = case.modalities.get(self.mask_key)
            item["mask"] = None if mpath is None else self.cache.get_mask(mpath, reference=ref,
                                                                          roi=roi)
        return item


def cache_requests(ds: ModalityPairDataset | CaseDataset) -> list[tuple]:
    """What reading every item of ``ds`` asks its cache for: ``(path, modality, kind,
    reference, roi)`` tuples for :meth:`VolumeCache.warm`."""
    roi_key = ds.cache.cfg.roi_mask
    out: list[tuple] = []
    if isinstance(ds, ModalityPairDataset):
        for case, mod, _, _ in ds.pairs:
            out.append((case.modalities[mod], mod, "image", None, roi_path(case, roi_key)))
        return out
    for case in ds.cases:
        roi = roi_path(case, roi_key)
        out += [(case.modalities[m], m, "image", None, roi) for m in ds.modalities
                if m in case.modalities]
        if ds.with_masks and case.masks.get(ds.mask_key):
            out.append((case.masks[ds.mask_key], None, "mask",
                        case.modalities.get(ds.mask_key), roi))
    return out


def collate_pairs(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`ModalityPairDataset` items: ``image`` (B, 1, D, H, W), ``modality_index``
    (B,) long, and lists ``modality``, ``report``, ``case_id``."""
    if not batch:
        raise ValueError("collate_pairs got an empty batch")
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "modality_index": torch.tensor([b["modality_index"] for b in batch], dtype=torch.long),
        "modality": [b["modality"] for b in batch],
        "report": [b["report"] for b in batch],
        "case_id": [b["case_id"] for b in batch],
    }


def collate_cases(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`CaseDataset` items.

    Returns ``images`` (B, M, 1, D, H, W) with zeros in the slots of missing modalities -
    consumers must use ``present`` (B, M) bool to ignore them - ``label`` (B,) long,
    ``reports`` / ``case_id`` lists, ``modalities`` (the M names) and, when the items have masks,
    ``mask`` (B, 1, D, H, W) (zeros where absent) with ``mask_present`` (B,) bool.
    """
    if not batch:
        raise ValueError("collate_cases got an empty batch")
    mods = tuple(batch[0]["modalities"])
    if any(tuple(b["modalities"]) != mods for b in batch):
        raise ValueError("collate_cases: items use different modality lists")
    ref = next((img for b in batch for img in b["images"].values()), None)
    if ref is None:
        raise ValueError("collate_cases: no item in the batch has any image")
    zeros = torch.zeros_like(ref)
    images = torch.stack([
        torch.stack([b["images"].get(m, zeros) for m in mods]) for b in batch
    ])
    out: dict[str, Any] = {
        "images": images,
        "present": torch.stack([b["present"] for b in batch]),
        "label": torch.stack([torch.as_tensor(b["label"], dtype=torch.long) for b in batch]),
        "reports": [b["reports"] for b in batch],
        "case_id": [b["case_id"] for b in batch],
        "modalities": list(mods),
    }
    if "mask" in batch[0]:
        have = [b.get("mask") is not None for b in batch]
        mref = next((b["mask"] for b in batch if b.get("mask") is not None), zeros)
        out["mask"] = torch.stack([b["mask"] if h else torch.zeros_like(mref)
                                   for b, h in zip(batch, have)])
        out["mask_present"] = torch.tensor(have, dtype=torch.bool)
    return out


__all__ = ["ModalityPairDataset", "CaseDataset", "collate_pairs", "collate_cases", "roi_path",
           "cache_requests"]
