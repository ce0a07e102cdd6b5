"""Manifest validation: every problem at once, one line each naming the case, field and fix.

Training and evaluation call :func:`require_valid`, which raises :class:`ManifestError` with the
same lines, so a bad manifest is never a bare traceback or a silent skip.

Example:
    >>> from medmap.data.manifest import Manifest
    >>> from medmap.data.validate import validate_manifest
    >>> problems = validate_manifest(Manifest.load("cases.jsonl"))   # doctest: +SKIP
    >>> print("\\n".join(problems) or "ok")                           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from pathlib import Path

import numpy as np

from medmap.data.io import VolumeReadError, read_shape, read_volume
from medmap.data.manifest import Case, Manifest, ManifestError
from medmap.data.vocab import GLOBAL_REPORT, ORGANS, SPLITS

# masks in the case's reference grid that are not tied to one modality
_REGION_MASKS = ("lesion", "organ")

# (problem or None, shape or None, affine or None) of one volume file
_Check = tuple[str | None, tuple[int, ...] | None, np.ndarray | None]


def volume_problem(array: np.ndarray) -> str | None:
    """What makes a readable 3D array unusable as an image (non-finite or constant voxels),
    with the fix; ``None`` when it is fine."""
    a = array
    finite = np.isfinite(a)
    if not finite.all():
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        return (f"{n_nan} NaN and {n_inf} Inf voxels; re-export the volume or replace "
                "non-finite voxels (e.g. with 0) before use")
    if float(a.max()) == float(a.min()):
        return (f"constant volume (every voxel = {float(a.min()):g}); the file is blank, "
                "re-export it or remove the modality from the case")
    return None


_CHECKED: dict[tuple, _Check] = {}      # stat signature -> result: each file read once
CHECK_MEMO_VERSION = 1                   # of the checks kept on disk (``memo_dir``)


def _signature(path: str) -> tuple | None:
    """(path, size, mtime) of a file, or of every file of a DICOM folder; None if missing."""
    try:
        st = os.stat(path)
        if os.path.isdir(path):
            return (path, tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                                       for e in os.scandir(path) if e.is_file())))
        return (path, st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def _check_volume(path: str, memo_dir: str | Path | None = None) -> _Check:
    """(problem or None, shape or None, affine or None) for one volume file; a file whose
    size and modification time have not changed is not read again in this process (the demo
    and the ablation validate the same manifest at every stage), nor, with ``memo_dir``, by a
    later process: a healthy file's check is kept there (one small JSON per file, keyed by its
    path, size, modification time and inode). Problems are not kept: such files are read
    again until they are fixed."""
    sig = file_signature(path)
    if sig is not None and (sig, path) in _CHECKED:
        return _CHECKED[(sig, path)]
    memo = _memo_file(Path(memo_dir), sig, path) if memo_dir is not None else None
    out = _load_memo(memo) if memo is not None else None
    if out is None:
        out = _read_check(path)
        if memo is not None and out[0] is None:
            _store_memo(memo, out)
    if sig is not None:
        _CHECKED[(sig, path)] = out
    return out


def _memo_file(memo_dir: Path, sig: tuple | None, path: str) -> Path | None:
    if sig is None:
        return None
    try:
        inode = os.stat(_file_of(path)).st_ino
    except (OSError, ValueError):
        return None
    key = json.dumps([CHECK_MEMO_VERSION, _reader_versions(), path, inode, sig])
    h = hashlib.sha256(key.encode()).hexdigest()
    return memo_dir / h[:2] / f"{h}.json"


def _load_memo(file: Path) -> _Check | None:
    """A kept check, or None when there is none or it is unreadable (then the file is read)."""
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
        shape = tuple(int(x) for x in d["shape"])
        affine = np.asarray(d["affine"], dtype=np.float64)
        if d["problem"] is not None or affine.shape != (4, 4):
            return None
        return None, shape, affine
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store_memo(file: Path, out: _Check) -> None:
    problem, shape, affine = out
    doc = {"problem": problem, "shape": list(shape or ()),
           "affine": None if affine is None else np.asarray(affine).tolist()}
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, file)
    except OSError:            # a read-only or blocked cache folder: keep no check
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _read_check(path: str) -> _Check:
    try:
        vol = read_volume(path)
    except VolumeReadError as e:
        msg = str(e)
        if msg.startswith(f"{path}: "):
            msg = msg[len(path) + 2:]
        return msg, None, None
    return volume_check(vol)


def volume_check(vol) -> _Check:
    """(problem or None, shape, affine) of a volume already read (a
    :class:`~medmap.data.io.Volume`): what validation records for its file."""
    return volume_problem(vol.array), vol.array.shape, np.asarray(vol.affine, dtype=np.float64)


def file_signature(path: str) -> tuple | None:
    """The stat signature validation keys its checks by (of the folder for a
    ``folder#<SeriesInstanceUID>`` path); None when the file is missing. Take it *before*
    reading a file whose check goes to :func:`remember_checks`: a file replaced after that
    then no longer matches and is read again."""
    return _signature(_file_of(path))


def _file_of(path: str) -> str:
    from medmap.data.io import split_series

    return str(split_series(path)[0])


@cache
def _reader_versions() -> tuple[str, ...]:
    """medmap and the readers behind ``read_volume``: a kept check is valid for these only."""
    from importlib.metadata import PackageNotFoundError, version

    import medmap

    out = [medmap.__version__]
    for pkg in ("monai", "nibabel", "pydicom", "pynrrd"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} absent")
    return tuple(out)


def remember_checks(checks: dict[str, tuple[tuple | None, _Check]]) -> int:
    """Adopt ``{path: (signature, check)}`` (the signature from :func:`file_signature`, taken
    before the file was read; the check from :func:`volume_check`), so that validating
    those files in this process does not read them again; an entry whose file has changed
    since (another signature) is dropped. Returns how many were adopted."""
    n = 0
    for path, (sig, out) in checks.items():
        if sig is not None and sig == file_signature(path):
            _CHECKED[(sig, path)] = out
            n += 1
    return n


def _world_box(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world (RAS mm) bounding box of a voxel grid's field of view."""
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    w = corners @ affine[:3, :3].T + affine[:3, 3]
    return w.min(0), w.max(0)


def _grid_fits(mshape, maff, shape, aff) -> str:
    """How a region mask relates to one volume's grid: ``"same"`` (same shape),
    ``"cut"`` (same affine, another shape: a cut or padded mask), ``"resample"`` (another grid
    whose field of view overlaps: preprocessing resamples the mask onto it by affine) or
    ``"no"`` (no overlap)."""
    if tuple(mshape) == tuple(shape):
        return "same"
    if maff is None or aff is None or len(mshape) != 3 or len(shape) != 3:
        return "no"
    if np.allclose(maff, aff, atol=1e-4):
        return "cut"
    lo1, hi1 = _world_box(mshape, maff)
    lo2, hi2 = _world_box(shape, aff)
    return "resample" if bool(np.all(np.minimum(hi1, hi2) > np.maximum(lo1, lo2))) else "no"


def _volume_line(case: Case, field: str, path: str, what: str) -> str:
    return f"case {case.case_id!r}: {field} ({path}): {what}"


def _grid_note(own: bool, fits: dict[str, str]) -> str:
    if own:
        return ""
    cut = [m for m, f in fits.items() if f == "cut"]
    if cut:
        return f" (it has the affine of {', '.join(cut)} but another shape: cut or padded?)"
    return " (and its field of view, by affine, overlaps none of them)"


def validate_cases(cases: Iterable[Case], check_files: bool = True, workers: int = 2,
                   required_masks: Sequence[str] = (), check_reports: bool = True,
                   memo_dir: str | Path | None = None) -> list[str]:
    """All problems of ``cases`` (paths already absolute), one line each.

    ``memo_dir``: a folder where the checks of healthy volume files are kept, so that a later
    process validating the same unchanged files does not decode them again (training and
    evaluation use ``<cache_dir>/checks``).

    ``required_masks``: ``masks`` keys every case must have (e.g. the ROI of
    ``PreprocessConfig.roi_mask``). ``check_reports=False`` skips the report checks, for uses
    that never read reports (prediction, evaluation).

    A region mask (``lesion``, ``organ`` or the organ's name) must lie on the grid of at least
    one of the case's volumes (same shape), or on another grid that overlaps a volume's field
    of view (preprocessing resamples it by affine), as when the phases of a study were
    acquired on different grids. A mask keyed by a modality must match that volume's shape.
    """
    cases = list(cases)
    problems: list[str] = []
    counts = Counter(c.case_id for c in cases)
    for cid, n in counts.items():
        if n > 1:
            problems.append(f"case {cid!r}: case_id: appears {n} times; case ids must be unique, "
                            "rename or drop the duplicates")
    vol_jobs: dict[str, None] = {}
    for c in cases:
        tag = f"case {c.case_id!r}"
        spec = ORGANS.get(c.organ)
        if spec is None:
            problems.append(f"{tag}: organ: unknown organ {c.organ!r}; use one of "
                            f"{', '.join(ORGANS)}")
        if c.split not in SPLITS:
            problems.append(f"{tag}: split: {c.split!r} is not a split; use one of "
                            f"{', '.join(SPLITS)}")
        if spec is not None and c.label is not None and c.label not in spec.classes:
            problems.append(f"{tag}: label: {c.label!r} is not a {c.organ} class; use one of "
                            f"{', '.join(spec.classes)} (or its index 0..{len(spec.classes) - 1})")
        if not c.modalities:
            problems.append(f"{tag}: modalities: no volumes; give at least one modality path")
        for m in c.modalities:
            if spec is not None and m not in spec.modalities:
                problems.append(f"{tag}: modalities.{m}: unknown modality for {c.organ}; use one of "
                                f"{', '.join(spec.modalities)}")
        for m, text in (c.reports.items() if check_reports else ()):
            field = f"reports.{m}"
            if m != GLOBAL_REPORT and m not in c.modalities:
                problems.append(f"{tag}: {field}: report for a modality the case does not have; "
                                f"add modalities.{m} or remove the report")
            if not text.strip():
                problems.append(f"{tag}: {field}: empty report; write the findings or remove the "
                                "entry")
            else:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    problems.append(f"{tag}: {field}: report is not valid UTF-8 text (undecodable "
                                    "bytes); re-save the report as UTF-8")
                if "\ufffd" in text:
                    problems.append(f"{tag}: {field}: report holds U+FFFD replacement characters "
                                    "(it was decoded from non-UTF-8 bytes); re-export it as UTF-8")
        for k in c.masks:
            if k not in _REGION_MASKS and k != c.organ and k not in c.modalities:
                problems.append(f"{tag}: masks.{k}: mask for a modality the case does not have; "
                                f"key masks by 'lesion', 'organ', the organ ({c.organ!r}) or by "
                                "one of the case's modalities")
        for k in required_masks:
            if k not in c.masks:
                problems.append(f"{tag}: masks.{k}: missing; preprocess.roi_mask is {k!r}, so "
                                f"every case needs this organ mask; add masks.{k} (or set "
                                "preprocess.roi_mask to null)")
        if check_files:
            for p in list(c.modalities.values()) + list(c.masks.values()):
                vol_jobs[p] = None
    if not check_files:
        return problems
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = dict(zip(vol_jobs, pool.map(partial(_check_volume, memo_dir=memo_dir),
                                              vol_jobs)))
    for c in cases:
        grids: dict[str, tuple[tuple[int, ...], np.ndarray | None]] = {}
        for m, p in c.modalities.items():
            msg, shape, aff = results[p]
            if msg:
                problems.append(_volume_line(c, f"modalities.{m}", p, msg))
            if shape is not None:
                grids[m] = (shape, aff)
        for k, p in c.masks.items():
            msg, shape, aff = results[p]
            if msg and not msg.startswith("constant volume"):  # an empty mask is legitimate
                problems.append(_volume_line(c, f"masks.{k}", p, msg))
                continue
            if shape is None or not grids:
                continue
            if k in grids:                     # a modality's own mask: that volume's grid
                fits = {k: "same" if tuple(grids[k][0]) == tuple(shape) else "no"}
            else:                              # a region mask: one volume's grid is enough
                fits = {m: _grid_fits(shape, aff, s, a) for m, (s, a) in grids.items()}
            ok = "same" in fits.values() or ("resample" in fits.values()
                                             and "cut" not in fits.values())
            if not ok:
                problems.append(_volume_line(
                    c, f"masks.{k}", p,
                    f"mask shape {tuple(shape)} does not match "
                    + ", ".join(f"{m} {tuple(grids[m][0])}" for m in fits)
                    + _grid_note(k in grids, fits)
                    + "; resample the mask onto its volume's grid"))
    return problems


def validate_manifest(manifest: Manifest, check_files: bool = True,
                      required_masks: Sequence[str] = (), check_reports: bool = True,
                      memo_dir: str | Path | None = None) -> list[str]:
    """Every problem in ``manifest`` (schema, vocabulary, files), one line each."""
    return validate_cases(manifest.resolved(), check_files=check_files,
                          required_masks=required_masks, check_reports=check_reports,
                          memo_dir=memo_dir)


def require_valid(manifest: Manifest, source: str | Path | None = None,
                  required_masks: Sequence[str] = (), check_reports: bool = True,
                  memo_dir: str | Path | None = None) -> Manifest:
    """Raise :class:`ManifestError` listing every problem, or return ``manifest``.

    ``required_masks``: ``masks`` keys every case must have (pass
    ``[cfg.roi_mask]`` when preprocessing crops to an organ mask). ``check_reports=False``:
    ignore the reports (prediction and evaluation never read them). ``memo_dir``: see
    :func:`validate_cases`.
    """
    problems = validate_manifest(manifest, required_masks=required_masks,
                                 check_reports=check_reports, memo_dir=memo_dir)
    if problems:
        raise ManifestError(problems, source)
    return manifest


__all__ = ["validate_manifest", "validate_cases", "require_valid", "read_shape", "volume_problem"]
