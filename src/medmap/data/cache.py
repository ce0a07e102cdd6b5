"""Disk cache of preprocessed volumes: :class:`VolumeCache`.

``get(path, modality)`` returns the preprocessed ``(1, D, H, W)`` tensor, computing it once and
storing it as a safetensors file keyed by the file content and every preprocessing setting.
Writes are atomic (a temporary file renamed into place), so a killed writer leaves no entry
that later reads as valid, and several processes may share one cache folder.

Cache key (sha256 hex of the canonical JSON, ``sort_keys=True``) of::

    {"medmap_cache_format": CACHE_FORMAT_VERSION, "kind": "image" | "mask",
     "content": sha256 of the file bytes (DICOM folder: of every file's relative path + sha256;
                ``folder#<SeriesInstanceUID>``: of that series' slice files only),
     "format": "nifti" | "nrrd" | "dicom", "preprocess": PreprocessConfig.to_dict(),
     "intensity": resolved intensity mode of the modality (None for masks),
     "reference": content hash of a mask's reference image (or None),
     "storage_dtype": "float32" | "float16", "monai": monai.__version__}

Entries live at ``<cache_dir>/v<CACHE_FORMAT_VERSION>/<key[:2]>/<key>.safetensors`` (one tensor,
``"data"``, plus the key JSON as metadata). Content hashes are memoised per
``(abs path, size, mtime_ns, inode)`` in memory and under ``<cache_dir>/hashes/`` so a later
epoch, DataLoader worker or process does not re-read the raw file. Training and evaluation
keep manifest validation's checks of healthy files under ``<cache_dir>/checks/`` (see
:func:`medmap.data.validate.validate_cases`).

An entry that cannot be read back (truncated, foreign, written for another key) is recomputed
and rewritten; :meth:`VolumeCache.stats` counts these as ``rebuilt`` and the first one of a
cache is named in a warning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from medmap.data import io as mio
from medmap.data import validate
from medmap.data.preprocess import Preprocessor

CACHE_FORMAT_VERSION = 1
_CHUNK = 1 << 20
_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# VolumeCache.warm: volumes each spawned worker must have to pay back its start (~5 s of
# imports against ~10 ms a volume at the demo's size)
MIN_VOLUMES_PER_WORKER = 500

# (signature JSON) -> content hash, shared by all caches of this process
_HASH_MEMO: dict[str, str] = {}


def _stat_signature(path: Path) -> tuple[str, Path, str | None, list[Path]]:
    """A string that changes whenever the file (or any file of a DICOM folder) changes; the
    folder or file, the SeriesInstanceUID of a ``folder#<uid>`` path (else None) and the files
    the signature covers. For ``folder#<uid>`` that is every file of the folder (stat only:
    cheap); which of them belong to the series is read from their headers on a memo miss."""
    base, uid = mio.split_series(path)
    p = base.resolve()
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
    return json.dumps([p.as_posix(), uid, sig]), p, uid, files


def _hash_files(root: Path, files: list[Path]) -> str:
    root = root.resolve()
    files = [f.resolve() for f in files]
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


def _stamps(paths) -> tuple | None:
    """``(absolute path, size, mtime_ns, inode)`` of each file in ``paths`` (None entries
    kept as None); None when one is a folder, a DICOM series or cannot be stat-ed."""
    out = []
    for p in paths:
        if p is None:
            out.append(None)
            continue
        s = str(p)
        if "#" in s:
            return None
        try:
            st = os.stat(s)
        except (OSError, ValueError):      # missing, unreadable or a NUL in the path
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        out.append((os.path.abspath(s), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


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
        self.rebuilt = 0
        self._warned_write = False
        self._warned_rebuilt = False
        # (path, modality, kind, reference, roi) -> (file stamps, payload JSON, key): an
        # entry's key is reused while its files' stat stamps and the settings are unchanged
        self._key_memo: dict[tuple, tuple] = {}
        self._memo_cfg = None          # the settings the memo was built with (a copy)
        # while warming: {path: (signature, validation check)} of the files read (see warm)
        self._checks: dict[str, tuple] | None = None

    @property
    def cfg(self):
        return self.preprocessor.cfg

    def stats(self) -> dict[str, int]:
        """``hits``, ``misses`` (preprocess runs), ``files_hashed`` and ``rebuilt`` (entries
        found on disk but unreadable, recomputed and rewritten; each is also a miss)."""
        return {"hits": self.hits, "misses": self.misses, "files_hashed": self.files_hashed,
                "rebuilt": self.rebuilt}

    # ---- keys -------------------------------------------------------------------------------
    def content_hash(self, path: str | Path) -> str:
        """sha256 of the file (or of every file of a DICOM folder, or of the slice files of the
        series a ``folder#<SeriesInstanceUID>`` path names), memoised by stat signature."""
        base, _ = mio.split_series(path)
        if not base.exists():
            raise mio.VolumeReadError(f"{base}: file not found; check the path in the manifest")
        sig, root, uid, files = _stat_signature(Path(path))
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
        if uid is not None:
            files = mio.series_files(path)    # that series' slices; errors name the series
        digest = _hash_files(root, files)
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

    def warm(self, requests, workers: int | None = None, pool=None) -> int:
        """Preprocess in parallel, ahead of training, every request that has no entry yet, so
        that no epoch pays for filling the cache: ``requests`` are ``(path, modality, kind,
        reference, roi)`` tuples (``kind`` ``"image"`` or ``"mask"``; see
        :func:`medmap.data.datasets.cache_requests`). ``workers`` processes (None: one per
        CPU core, but only as many as have :data:`MIN_VOLUMES_PER_WORKER` volumes each, so a
        small job stays in this process; 1: in this process). ``pool``: a
        ``ProcessPoolExecutor`` shared with other jobs of the run, so that its
        workers start once (a quarter of those volumes per worker then suffices). Returns
        how many entries were computed. Without a cache folder this does nothing.
        """
        if self.cache_dir is None:
            return 0
        todo = []
        for r in dict.fromkeys(tuple(r) for r in requests):
            if not self.entry_path(self._entry_key(*r)[1]).exists():
                todo.append(r)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
        if workers is None:
            # a spawned worker costs ~5 s of imports before its first volume (~10 ms each at
            # the demo's size): each must have enough volumes to pay that back; a shared pool
            # pays its start once for several jobs, so a quarter of that suffices
            per_worker = MIN_VOLUMES_PER_WORKER // (4 if pool is not None else 1)
            workers = min(cores, len(todo) // per_worker)
        workers = max(1, min(int(workers), len(todo)))
        if workers == 1 or len(todo) < 8:
            self._checks = {}
            try:
                for r in todo:
                    self._get(*r)
                validate.remember_checks(self._checks)
            finally:
                self._checks = None
            return len(todo)
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool
        from multiprocessing import get_context

        chunks = [todo[i::workers] for i in range(workers)]
        args = [(str(self.cache_dir), self.cfg.to_dict(), self.storage_dtype, c)
                for c in chunks]
        try:
            if pool is not None:
                checks = list(pool.map(_warm_chunk, args))
            else:
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as own:
                    checks = list(own.map(_warm_chunk, args))
            self.misses += len(todo)
            for c in checks:          # the workers read every file: validation need not
                validate.remember_checks(c)
        except BrokenProcessPool:
            # a script without an `if __name__ == "__main__":` guard re-runs itself in
            # every spawned worker, which then dies: do the work here instead
            warnings.warn("preprocessing workers could not start (is the calling script "
                          "missing an `if __name__ == \"__main__\":` guard?); "
                          "preprocessing in this process", stacklevel=2)
            for r in todo:
                self._get(*r)
        return len(todo)

    def _compute(self, path, modality, kind, reference, roi) -> torch.Tensor:
        self.misses += 1
        src = path
        if self._checks is not None and "#" not in str(path) and Path(path).is_file():
            # warm: the file is read here anyway; keep its validation check for the caller
            sig = validate.file_signature(str(path))          # before the read (see there)
            src = mio.read_volume(path)
            self._checks[str(path)] = (sig, validate.volume_check(src))
        if kind == "mask":
            return self.preprocessor.preprocess_mask(src, reference=reference, roi=roi)
        return self.preprocessor(src, modality=modality, roi=roi)

    def _entry_key(self, path, modality, kind, reference, roi) -> tuple[str, str]:
        """``(payload JSON, sha256 key)`` of an entry (see :meth:`key_payload`). Memoised per
        cache: while every file of the entry keeps its stat stamp (size, mtime, inode) and the
        preprocessing settings are equal, a read skips re-deriving the payload (content hashes,
        settings dict, JSON: most of a cache hit's time). DICOM folders are not memoised here
        (their content hashes still are, by :func:`_stat_signature`)."""
        if self._memo_cfg != self.cfg:           # settings changed in place: start over
            self._key_memo.clear()
            self._memo_cfg = copy.deepcopy(self.cfg)
        memo_key = (str(path), modality, kind, str(reference), str(roi))
        stamps = _stamps((path, reference, roi))
        hit = self._key_memo.get(memo_key) if stamps is not None else None
        if hit is not None and hit[0] == stamps:
            return hit[1], hit[2]
        payload_json = json.dumps(self.key_payload(path, modality, kind=kind,
                                                   reference=reference, roi=roi),
                                  sort_keys=True)
        key = hashlib.sha256(payload_json.encode()).hexdigest()
        if stamps is not None:
            self._key_memo[memo_key] = (stamps, payload_json, key)
        return payload_json, key

    def _get(self, path, modality, kind, reference, roi) -> torch.Tensor:
        if self.cache_dir is None:
            return self._compute(path, modality, kind, reference, roi)
        payload_json, key = self._entry_key(path, modality, kind, reference, roi)
        entry = self.entry_path(key)
        expected = (1, *self.cfg.size)
        if entry.exists():
            t, why = self._read_entry(entry, payload_json, expected)
            if t is not None:
                self.hits += 1
                return t
            self.rebuilt += 1
            if not self._warned_rebuilt:
                warnings.warn(f"VolumeCache: entry {entry} for {path} is unusable ({why}); "
                              "recomputing it (stats()['rebuilt'] counts these)", stacklevel=3)
                self._warned_rebuilt = True
        t = self._compute(path, modality, kind, reference, roi)
        self._store(entry, t, payload_json, path, modality)
        return t

    @staticmethod
    def _read_entry(entry: Path, payload_json: str,
                    expected: tuple[int, ...]) -> tuple[torch.Tensor | None, str]:
        """The entry's tensor, or ``(None, why)`` when the file is truncated, foreign, written
        for another key or of another shape."""
        from safetensors import safe_open

        try:
            with safe_open(str(entry), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != payload_json:
                    return None, "written for another key"
                t = f.get_tensor("data")
        except Exception as e:  # truncated / not safetensors: recompute and overwrite
            return None, f"unreadable: {type(e).__name__}"
        if tuple(t.shape) != expected:
            return None, f"shape {tuple(t.shape)}, expected {expected}"
        return t.to(torch.float32).contiguous(), ""

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


def _warm_chunk(args) -> dict[str, tuple]:
    """Worker of :meth:`VolumeCache.warm`: compute and store one share of the requests;
    returns the validation checks of the files it read (``{path: (signature, check)}``)."""
    from medmap.data.preprocess import PreprocessConfig

    cache_dir, cfg, dtype, requests = args
    torch.set_num_threads(1)
    cache = VolumeCache(cache_dir, Preprocessor(PreprocessConfig.from_dict(cfg)),
                        storage_dtype=dtype)
    cache._checks = {}
    for r in requests:
        cache._get(*r)
    return cache._checks


__all__ = ["CACHE_FORMAT_VERSION", "VolumeCache"]
