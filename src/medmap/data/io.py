"""Reading volumes: NIfTI (.nii/.nii.gz) and NRRD through MONAI's readers, DICOM series with
pydicom.

A DICOM volume is a folder of slice files, as scanners write them. The series is read with
pydicom directly (MONAI's ``PydicomReader`` stacks slices by InstanceNumber, mixes every series
of the folder and spaces slices by the z coordinate only, so it gets oblique, reordered or
incomplete series wrong):

* several series in one folder: pick one by its SeriesInstanceUID, either appended to the
  folder path as ``folder#<SeriesInstanceUID>`` (usable wherever a manifest or a command takes
  a volume path) or with ``read_volume(folder, series=uid)``; without a choice the read fails
  with a message listing every series of the folder;
* slices are ordered by their ImagePositionPatient projected on the slice normal
  (ImageOrientationPatient row x column), never by file name or InstanceNumber;
* RescaleSlope / RescaleIntercept are applied per slice;
* the affine maps voxel ``(column, row, slice)`` to RAS mm, built from ImageOrientationPatient,
  PixelSpacing and the first and last slice positions (oblique and tilted series keep their
  geometry); DICOM's LPS patient axes are flipped to RAS;
* uneven slice spacing (a missing slice), two slices at one position, mixed orientations or
  matrix sizes are errors naming the folder, the series, the files and the fix.

A single ``.dcm`` file (e.g. one multi-frame file) is still read with MONAI's reader.

Example:
    >>> from medmap.data.io import read_volume
    >>> vol = read_volume("case/T2WI.nii.gz")          # doctest: +SKIP
    >>> vol.array.shape, vol.affine.shape              # doctest: +SKIP
    ((64, 64, 64), (4, 4))
    >>> vol = read_volume("study/DICOM#1.2.840.113619.2.55.3.1234")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import stat
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmap.config import UserError

__all__ = ["DicomSeries", "Volume", "VolumeReadError", "dicom_series", "read_shape",
           "read_volume", "series_files", "split_series", "volume_format"]


# MONAI's optional GPU-codec reader announces on every read that its plugin is absent. Silenced
# by message, once, at import: warnings.catch_warnings() around each read is not thread-safe
# (validation reads volumes in threads), and concurrent blocks left "ignore everything" installed
# for the whole process.
warnings.filterwarnings("ignore", message=r".*(nvImageCodec|NvImgCodec).*")

class VolumeReadError(UserError):
    """A volume file is missing, unreadable, or not a single 3D volume."""


@dataclass
class Volume:
    """A 3D array with its voxel-to-world (RAS mm) affine."""

    array: np.ndarray       # (X, Y, Z), float32
    affine: np.ndarray      # (4, 4)
    path: str


_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def split_series(path: str | Path) -> tuple[Path, str | None]:
    """``"folder#<SeriesInstanceUID>"`` -> ``(folder, uid)``; any other path -> ``(path, None)``.

    The suffix only counts when what precedes the last ``#`` is an existing folder, so file
    names holding a ``#`` are left alone.

    Example:
        >>> split_series("notes/a.nii.gz")
        (PosixPath('notes/a.nii.gz'), None)
    """
    s = str(path)
    head, sep, tail = s.rpartition("#")
    if sep and tail and "/" not in tail and "\\" not in tail and Path(head).is_dir():
        if not _UID.fullmatch(tail):
            raise VolumeReadError(
                f"{s}: {tail!r} after '#' is not a SeriesInstanceUID (digits and dots, e.g. "
                f"1.2.840.10008.1); write the folder as {head}#<SeriesInstanceUID>")
        return Path(head), tail
    return Path(s), None


def volume_format(path: str | Path) -> str:
    """``"nifti"``, ``"nrrd"`` or ``"dicom"`` (a folder), from the path; ValueError otherwise."""
    p, uid = split_series(path)
    name = p.name.lower()
    if uid is not None or p.is_dir():
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith(".dcm"):
        return "dicom"
    raise VolumeReadError(
        f"{path}: unsupported volume format; use NIfTI (.nii/.nii.gz), NRRD (.nrrd) "
        "or a DICOM series folder"
    )


_QUIETED: list[bool] = []


def _reader(fmt: str):
    if not _QUIETED:    # once: Logger.setLevel clears every logger's cache (~0.5 ms a call)
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
        _QUIETED.append(True)
    from monai.data import NibabelReader, NrrdReader, PydicomReader

    if fmt == "nifti":
        return NibabelReader()
    if fmt == "nrrd":
        return NrrdReader()
    return PydicomReader()


def read_volume(path: str | Path, series: str | None = None) -> Volume:
    """Read one 3D volume (a 4D file with a single frame is squeezed).

    Args:
        path: a NIfTI or NRRD file, a DICOM series folder (``folder#<SeriesInstanceUID>`` picks
            one series of a folder holding several), or a single ``.dcm`` file.
        series: SeriesInstanceUID of the series to read from a DICOM folder (same as the
            ``#`` suffix).

    Raises :class:`VolumeReadError` naming the file and the fix for a missing, truncated or
    corrupt file, one that is not 3D, or a DICOM folder that is not one regular series.

    Example:
        >>> vol = read_volume("scans/T1", series="1.2.3.4")       # doctest: +SKIP
    """
    p, uid = _locate(path, series)
    if not p.exists():
        raise VolumeReadError(f"{p}: file not found; check the path in the manifest")
    fmt = volume_format(p)
    if fmt == "dicom" and p.is_dir():
        s = _select_series(p, uid)
        if not _multiframe(s):
            return _read_series(s, str(path) if uid is None else f"{p}#{s.uid}")
        p = s.files[0]  # one multi-frame file: MONAI's reader
    from monai.transforms import LoadImage

    try:
        loader = LoadImage(reader=_reader(fmt), image_only=True, dtype=np.float32)
        img = loader(str(p))
        arr = np.asarray(img)  # forces decompression of lazily read data
    except Exception as e:  # the readers raise many types (EOFError, zlib.error, OSError, ...)
        raise VolumeReadError(
            f"{p}: unreadable or truncated {fmt} file ({_reader_error(e)}); "
            "re-export or re-copy the file"
        ) from None
    arr = _as_3d(arr, p)
    affine = np.asarray(img.affine, dtype=np.float64) if hasattr(img, "affine") else np.eye(4)
    return Volume(arr.astype(np.float32, copy=False), affine, str(p))


# the last files read by read_recent: (path, mtime_ns, size, inode) -> Volume
_RECENT: OrderedDict[tuple, Volume] = OrderedDict()
RECENT_FILES = 2


def read_recent(path: str | Path) -> Volume:
    """:func:`read_volume`, remembering the last :data:`RECENT_FILES` files read (by path and
    stat stamp: a rewritten file is read again). Preprocessing reads a case's ROI mask once
    for the crop and once for the reference tissue of every sequence; this reads it once per
    case. Returns a copy each time (callers may modify it); DICOM folders are not remembered.

    Example:
        >>> a = read_recent("case/lesion.nii.gz"); b = read_recent("case/lesion.nii.gz")  # doctest: +SKIP
    """
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return read_volume(path)
    if stat.S_ISDIR(st.st_mode):
        return read_volume(path)
    key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _RECENT.get(key)
    if hit is None:
        hit = read_volume(path)
        _RECENT[key] = hit
        while len(_RECENT) > RECENT_FILES:
            _RECENT.popitem(last=False)
    else:
        _RECENT.move_to_end(key)
    return Volume(hit.array.copy(), hit.affine.copy(), hit.path)


def _reader_error(e: Exception) -> str:
    """One line saying why a reader failed. MONAI's "cannot find a suitable reader" message
    embeds every reader's traceback; the last ``...Error: ...`` line of it is the cause."""
    text = str(e).strip()
    if "suitable reader" in text:
        causes = re.findall(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", text, re.M)
        if causes:
            name, msg = causes[-1]
            return f"{name.rsplit('.', 1)[-1]}: {msg.strip()}"[:300]
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}"[:300]


def _locate(path: str | Path, series: str | None) -> tuple[Path, str | None]:
    p, uid = split_series(path)
    if series is not None:
        series = str(series).strip()
        if uid is not None and uid != series:
            raise VolumeReadError(f"{path}: the path names series {uid} but series={series} was "
                                  "asked for; give the SeriesInstanceUID once")
        if not _UID.fullmatch(series):
            raise VolumeReadError(f"{path}: series {series!r} is not a SeriesInstanceUID (digits "
                                  "and dots)")
        if p.exists() and not p.is_dir():
            raise VolumeReadError(f"{p}: series={series} needs a DICOM folder, not a file")
        uid = series
    return p, uid


def _as_3d(arr: np.ndarray, p: Path) -> np.ndarray:
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim < 3 or min(arr.shape[:3]) < 2:
        raise VolumeReadError(
            f"{p}: expected a 3D volume, got a 2D image of shape {tuple(arr.shape)}; "
            "stack the slices into one 3D file"
        )
    if arr.ndim != 3:
        raise VolumeReadError(
            f"{p}: expected a 3D volume, got shape {tuple(arr.shape)} ({arr.ndim}D); "
            "split multi-frame series into one 3D file per volume"
        )
    return arr


def read_shape(path: str | Path) -> tuple[int, ...]:
    """Spatial shape from the header only (NIfTI, NRRD, DICOM series), else by reading."""
    p, uid = split_series(path)
    fmt = volume_format(p if uid is None else path)
    if fmt == "dicom" and p.is_dir():
        s = _select_series(p, uid)
        if not _multiframe(s):
            return s.shape
        p = s.files[0]
    try:
        if fmt == "nifti":
            import nibabel as nib

            shape = tuple(int(s) for s in nib.load(str(p)).shape)
        elif fmt == "nrrd":
            import nrrd

            shape = tuple(int(s) for s in nrrd.read_header(str(p))["sizes"])
        else:
            return read_volume(p).array.shape
    except Exception as e:
        raise VolumeReadError(f"{p}: unreadable header ({type(e).__name__}: {e})") from None
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


# ---- DICOM series ---------------------------------------------------------------------------
@dataclass
class DicomSeries:
    """One series of a DICOM folder: its UID, a description and its slice files.

    ``files`` are sorted by position along the slice normal once :func:`dicom_series` has
    checked the geometry (``affine``, ``shape`` are then set); ``problem`` says why a series
    cannot be read as one regular 3D volume (``None`` when it can).
    """

    uid: str
    description: str
    files: list[Path]
    shape: tuple[int, int, int] = (0, 0, 0)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    problem: str | None = None
    frames: int = 1

    def label(self) -> str:
        return f"{self.uid} ({self.description}, {len(self.files)} file(s))"


_HEADER_TAGS = ["SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "Rows",
                "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
                "NumberOfFrames"]


def dicom_series(folder: str | Path) -> list[DicomSeries]:
    """Every image series in a DICOM folder (files directly in it), in SeriesNumber order.

    Files that are not DICOM images (DICOMDIR, reports, other files) are skipped.

    Example:
        >>> [s.uid for s in dicom_series("study/DICOM")]           # doctest: +SKIP
        ['1.2.840.113619.2.55.3.1', '1.2.840.113619.2.55.3.2']
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    groups: dict[str, list[tuple[Path, object]]] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError):
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue  # not an image (DICOMDIR, structured report, presentation state, ...)
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or "unknown"), []).append((f, ds))
    if not groups:
        raise VolumeReadError(f"{folder}: holds no DICOM image files; point the path at the "
                              "folder of the series' slice files (or at a NIfTI/NRRD file)")
    out = []
    for uid, items in groups.items():
        ds0 = items[0][1]
        bits = [str(ds0.get(k, "") or "").strip() for k in ("Modality", "SeriesDescription")]
        num = ds0.get("SeriesNumber", None)
        desc = " ".join(b for b in bits if b) or "no description"
        if num not in (None, ""):
            desc = f"series {num}: {desc}"
        s = DicomSeries(uid, desc, [f for f, _ in items],
                        frames=int(ds0.get("NumberOfFrames", 1) or 1))
        _check_geometry(folder, s, items)
        out.append((_num(num), uid, s))
    return [s for _, _, s in sorted(out, key=lambda t: (t[0], t[1]))]


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("inf")


def series_files(path: str | Path) -> list[Path]:
    """The files a volume path reads: one file, every file of a DICOM folder, or the slice
    files of the series a ``folder#<SeriesInstanceUID>`` path names (for content hashing)."""
    p, uid = split_series(path)
    if uid is None:
        return sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return sorted(_select_series(p, uid, check=False).files)


def _multiframe(s: DicomSeries) -> bool:
    """A single multi-frame file (read with MONAI's reader)."""
    return len(s.files) == 1 and s.frames > 1


def _select_series(folder: Path, uid: str | None, check: bool = True) -> DicomSeries:
    """The series of ``folder`` to read: the one named ``uid``, or the only one."""
    found = dicom_series(folder)
    listing = "; ".join(s.label() for s in found)
    if uid is not None:
        hit = [s for s in found if s.uid == uid]
        if not hit:
            raise VolumeReadError(f"{folder}: no DICOM series {uid} in this folder; it holds "
                                  f"{len(found)} series: {listing}; fix the SeriesInstanceUID "
                                  "after '#'")
        s = hit[0]
    elif len(found) > 1:
        raise VolumeReadError(
            f"{folder}: holds {len(found)} DICOM series: {listing}; pick one by writing the "
            f"path as {folder}#<SeriesInstanceUID> (e.g. {folder}#{found[0].uid}), or move "
            "each series into its own folder")
    else:
        s = found[0]
    if check and s.problem:
        raise VolumeReadError(s.problem)
    return s


def _check_geometry(folder: Path, s: DicomSeries, items: list) -> None:
    """Sort ``s.files`` along the slice normal and set ``s.shape``/``s.affine``, or
    ``s.problem``."""
    tag = f"{folder} (series {s.uid})"

    def fail(msg: str) -> None:
        s.problem = f"{tag}: {msg}"

    if len(items) == 1 and s.frames > 1:
        return
    if len(items) < 2:
        return fail(f"a single 2D slice ({items[0][0].name}); a volume needs the series' "
                    "slices in one folder")
    lacking = [f.name for f, ds in items
               if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds]
    if lacking:
        return fail(f"slice(s) {', '.join(lacking[:3])} lack ImagePositionPatient / "
                    "ImageOrientationPatient, so they cannot be placed in space; re-export the "
                    "series with its geometry tags")
    try:
        iop = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in items])
        pos = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
        spacing = np.array([[float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])]
                            for _, ds in items])
    except (TypeError, ValueError) as e:
        return fail(f"unreadable geometry tag ({e}); re-export the series")
    if iop.shape[1] != 6 or pos.shape[1] != 3 or spacing.shape[1] != 2:
        return fail("malformed ImageOrientationPatient / ImagePositionPatient / PixelSpacing")
    if not np.allclose(iop, iop[0], atol=1e-4):
        k = int(np.argmax(np.abs(iop - iop[0]).max(axis=1)))
        return fail(f"slices of different orientations ({items[0][0].name} and "
                    f"{items[k][0].name}: ImageOrientationPatient differs); a localizer or "
                    "multi-planar series is not one volume; keep one orientation per folder")
    grids = {(int(ds.Rows), int(ds.Columns)) for _, ds in items}
    if len(grids) > 1 or not np.allclose(spacing, spacing[0], rtol=1e-4):
        return fail(f"slices of different matrix sizes or PixelSpacing ({sorted(grids)}); "
                    "the series is not one volume; keep one acquisition per folder")
    r, c = iop[0, :3], iop[0, 3:]
    n = np.cross(r, c)
    if np.linalg.norm(n) < 1e-6:
        return fail("ImageOrientationPatient row and column directions are parallel; "
                    "re-export the series")
    n /= np.linalg.norm(n)
    z = pos @ n
    order = np.argsort(z, kind="stable")
    z = z[order]
    files = [items[i][0] for i in order]
    d = np.diff(z)
    same = np.flatnonzero(d < 1e-3)
    if same.size:
        i = int(same[0])
        return fail(f"{files[i].name} and {files[i + 1].name} lie at the same position "
                    f"({z[i]:.3f} mm along the slice normal): several echoes, phases or "
                    "acquisitions share this series; split them into one folder each (e.g. "
                    "by EchoNumbers / AcquisitionNumber)")
    med = float(np.median(d))
    bad = np.flatnonzero(np.abs(d - med) > max(0.01 * med, 1e-3))
    if bad.size:
        i = int(bad[0])
        lost = int(round(d[i] / med)) - 1
        what = (f"{lost} slice(s) missing between {files[i].name} and {files[i + 1].name}"
                if lost >= 1 and abs(d[i] - (lost + 1) * med) <= max(0.02 * med, 1e-3)
                else f"irregular spacing after {files[i].name}")
        return fail(f"uneven slice spacing: {d[i]:.4g} mm between slices {i + 1} and {i + 2} "
                    f"(at {z[i]:.4g} and {z[i + 1]:.4g} mm) where the others are {med:.4g} mm "
                    f"apart, so {what}; re-copy or re-export the complete series")
    rows, cols = grids.pop()
    dr, dc = spacing[0]
    p_sorted = pos[order]
    lps = np.eye(4)
    lps[:3, 0] = r * dc                    # column index i runs along the row direction
    lps[:3, 1] = c * dr                    # row index j runs along the column direction
    lps[:3, 2] = (p_sorted[-1] - p_sorted[0]) / (len(files) - 1)
    lps[:3, 3] = p_sorted[0]
    s.files = files
    s.shape = (cols, rows, len(files))
    s.affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _read_series(s: DicomSeries, name: str) -> Volume:
    import pydicom

    out = np.empty(s.shape, np.float32)
    for k, f in enumerate(s.files):
        try:
            ds = pydicom.dcmread(f)
            if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
                raise VolumeReadError(f"{f}: colour DICOM image (SamplesPerPixel "
                                      f"{ds.SamplesPerPixel}); medmap reads greyscale series")
            pix = np.asarray(ds.pixel_array, dtype=np.float64)
        except VolumeReadError:
            raise
        except Exception as e:
            raise VolumeReadError(
                f"{f}: unreadable DICOM slice ({type(e).__name__}: {e}); re-copy the file, or "
                "install the decoder of its transfer syntax (e.g. pylibjpeg)") from None
        if pix.shape != (s.shape[1], s.shape[0]):
            raise VolumeReadError(f"{f}: pixel data of shape {pix.shape}, the series header says "
                                  f"{(s.shape[1], s.shape[0])}; re-export the series")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        out[:, :, k] = (pix * slope + inter).T
    return Volume(out, s.affine.copy(), name)
