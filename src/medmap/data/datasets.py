"""Disk-cached preprocessed volumes and the torch datasets built on them.

* :class:`VolumeCache` - ``get(path, modality)`` returns the preprocessed ``(1, D, H, W)`` tensor,
  computing it once and storing it as a safetensors file keyed by the file content and every
  preprocessing setting.
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

Cache key (sha256 hex of the canonical JSON, ``sort_keys=True``) of::

    {"medmap_cache_format": CACHE_FORMAT_VERSION, "kind": "image" | "mask",
     "content": sha256 of the file bytes (DICOM folder: of every file's relative path + sha256),
     "format": "nifti" | "nrrd" | "dicom", "preprocess": PreprocessConfig.to_dict(),
     "intensity": resolved intensity mode of the modality (None for masks),
     "reference": content hash of a mask's reference image (or None),
     "storage_dtype": "float32" | "float16", "monai": monai.__version__}

Entries live at ``<cache_dir>/v<CACHE_FORMAT_VERSION>/<key[:2]>/<key>.safetensors`` (one tensor,
``"data"``, plus the key JSON as metadata). Content hashes are memoised per
``(abs path, size, mtime_ns, inode)`` in memory and under ``<cache_dir>/hashes/`` so a later
epoch, DataLoader worker or process does not re-read the raw file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from medmap.data import io as mio
from medmap.data.manifest import Case, Manifest
from medmap.data.preprocess import Preprocessor
from medmap.data.vocab import GLOBAL_REPORT, get_organ

CACHE_FORMAT_VERSION = 1
_CHUNK = 1 << 20
_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}

# (signature JSON) -> content hash, shared by all caches of this process
_HASH_MEMO: dict[str, str] = {}


def _stat_signature(path: Path) -> tuple[str, list[Path]]:
    """A string that changes whenever the file (or any file of a DICOM folder) changes, and the
    list of files to hash."""
    p = path.resolve()
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.as_posix())
        if not files:
            raise mio.VolumeReadError(f"{path}: DICOM folder holds no files")
    else:
        files = [p]
    sig = []
    for f in files:
        st = f.stat()
        sig.append([f.relative_to(p).as_posix() if p.is_dir() else "", st.st_size,
                    st.st_mtime_ns, st.st_ino])
    return json.dumps([p.as_posix(), sig]), files


def _hash_files(root: Path, files: list[Path]) -> str:
    root = root.resolve()
    outer = hashlib.sha256()
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        if root.is_dir():
            outer.update(f.relative_to(root).as_posix().encode() + b"\0")
        outer.update(h.digest())
    return outer.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class VolumeCache:
    """Preprocessed-volume cache on disk (safetensors, no pickle), safe for concurrent workers.

    Args:
        cache_dir: folder of the cache; ``None`` disables the disk cache (every ``get``
            preprocesses and counts as a miss).
        preprocessor: the :class:`Preprocessor` (its config is part of every key).
        storage_dtype: ``"float32"`` (exact) or ``"float16"`` (half the disk; tensors come back
            as float32 either way).

    Counters: ``hits``, ``misses`` (preprocess runs) and ``files_hashed`` (raw files read to
    compute a content hash); see :meth:`stats`. In DataLoader workers they count per worker.
    """

    def __init__(
        self,
        cache_dir: str | Path | None,
        preprocessor: Preprocessor | None = None,
        *,
        storage_dtype: str = "float32",
    ):
        if storage_dtype not in _STORAGE_DTYPES:
            raise ValueError(f"storage_dtype {storage_dtype!r} unknown; use one of "
                             f"{list(_STORAGE_DTYPES)}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.preprocessor = preprocessor if preprocessor is not None else Preprocessor()
        self.storage_dtype = storage_dtype
        self.hits = 0
        self.misses = 0
        self.files_hashed = 0
        self._warned_write = False

    @property
    def cfg(self):
        return self.preprocessor.cfg

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "files_hashed": self.files_hashed}

    # ---- keys -------------------------------------------------------------------------------
    def content_hash(self, path: str | Path) -> str:
        """sha256 of the file (or of every file of a DICOM folder), memoised by stat signature."""
        p = Path(path)
        if not p.exists():
            raise mio.VolumeReadError(f"{p}: file not found; check the path in the manifest")
        sig, files = _stat_signature(p)
        if sig in _HASH_MEMO:
            return _HASH_MEMO[sig]
        memo_file = None
        if self.cache_dir is not None:
            memo_file = (self.cache_dir / "hashes" /
                         hashlib.sha256(sig.encode()).hexdigest()).with_suffix(".sha256")
            try:
                digest = memo_file.read_text().strip()
                if len(digest) == 64:
                    _HASH_MEMO[sig] = digest
                    return digest
            except OSError:
                pass
        digest = _hash_files(p, files)
        self.files_hashed += len(files)
        _HASH_MEMO[sig] = digest
        if memo_file is not None:
            try:
                memo_file.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write_bytes(memo_file, digest.encode())
            except OSError:
                pass
        return digest

    def key_payload(
        self,
        path: str | Path,
        modality: str | None = None,
        *,
        kind: str = "image",
        reference: str | Path | None = None,
        roi: str | Path | None = None,
    ) -> dict[str, Any]:
        """The JSON object whose sha256 is the cache key (see the module docstring)."""
        import monai

        return {
            "medmap_cache_format": CACHE_FORMAT_VERSION,
            "kind": kind,
            "content": self.content_hash(path),
            "format": mio.volume_format(path),
            "preprocess": self.cfg.to_dict(),
            "intensity": self.cfg.intensity_for(modality) if kind == "image" else None,
            "reference": None if reference is None else self.content_hash(reference),
            "roi": None if roi is None or self.cfg.roi_mask is None else self.content_hash(roi),
            "storage_dtype": self.storage_dtype,
            "monai": monai.__version__,
        }

    def key(self, path: str | Path, modality: str | None = None, *, kind: str = "image",
            reference: str | Path | None = None, roi: str | Path | None = None) -> str:
        payload = self.key_payload(path, modality, kind=kind, reference=reference, roi=roi)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def entry_path(self, key: str) -> Path:
        if self.cache_dir is None:
            raise ValueError("this VolumeCache has no cache_dir")
        return self.cache_dir / f"v{CACHE_FORMAT_VERSION}" / key[:2] / f"{key}.safetensors"

    # ---- access -----------------------------------------------------------------------------
    def get(self, path: str | Path, modality: str | None = None,
            roi: str | Path | None = None) -> torch.Tensor:
        """Preprocessed image ``(1, *cfg.size)`` float32 for ``path`` read as ``modality``
        (``roi``: the case's organ mask, needed when ``cfg.roi_mask`` is set)."""
        return self._get(path, modality, "image", None, roi)

    def get_mask(self, path: str | Path, reference: str | Path | None = None,
                 roi: str | Path | None = None) -> torch.Tensor:
        """Preprocessed mask (nearest interpolation) ``(1, *cfg.size)`` float32."""
        return self._get(path, None, "mask", reference, roi)

    def _compute(self, path, modality, kind, reference, roi) -> torch.Tensor:
        self.misses += 1
        if kind == "mask":
            return self.preprocessor.preprocess_mask(path, reference=reference, roi=roi)
        return self.preprocessor(path, modality=modality, roi=roi)

    def _get(self, path, modality, kind, reference, roi) -> torch.Tensor:
        if self.cache_dir is None:
            return self._compute(path, modality, kind, reference, roi)
        payload = self.key_payload(path, modality, kind=kind, reference=reference, roi=roi)
        payload_json = json.dumps(payload, sort_keys=True)
        key = hashlib.sha256(payload_json.encode()).hexdigest()
        entry = self.entry_path(key)
        expected = (1, *self.cfg.size)
        if entry.exists():
            try:
                from safetensors.torch import load_file

                t = load_file(str(entry))["data"]
                if tuple(t.shape) == expected:
                    self.hits += 1
                    return t.to(torch.float32).contiguous()
            except Exception:  # truncated / foreign file: recompute and overwrite
                pass
        t = self._compute(path, modality, kind, reference, roi)
        self._store(entry, t, payload_json, path, modality)
        return t

    def _store(self, entry: Path, t: torch.Tensor, payload_json: str, path, modality) -> None:
        from safetensors.torch import save_file

        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            data = t.to(_STORAGE_DTYPES[self.storage_dtype]).contiguous()
            save_file({"data": data}, str(tmp), metadata={
                "medmap_cache_format": str(CACHE_FORMAT_VERSION),
                "key": payload_json,
                "source": str(path),
                "modality": "" if modality is None else str(modality),
            })
            os.replace(tmp, entry)
        except OSError as e:
            if not self._warned_write:
                warnings.warn(f"VolumeCache: cannot write {entry} ({e}); continuing uncached",
                              stacklevel=3)
                self._warned_write = True
        finally:
            tmp.unlink(missing_ok=True)


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
        raise ValueError(
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
        raise ValueError(
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
                if not _has_text(report):
                    continue
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
            raise ValueError(f"modalities must be a non-empty list without repeats, "
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


__all__ = [
    "CACHE_FORMAT_VERSION", "VolumeCache", "ModalityPairDataset", "CaseDataset",
    "collate_pairs", "collate_cases", "roi_path",
]
