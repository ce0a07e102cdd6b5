"""Reading volumes through MONAI's readers: NIfTI (.nii/.nii.gz), NRRD and DICOM series folders.

Example:
    >>> from medmap.data.io import read_volume
    >>> vol = read_volume("case/T2WI.nii.gz")          # doctest: +SKIP
    >>> vol.array.shape, vol.affine.shape              # doctest: +SKIP
    ((64, 64, 64), (4, 4))
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VolumeReadError(ValueError):
    """A volume file is missing, unreadable, or not a single 3D volume."""


@dataclass
class Volume:
    """A 3D array with its voxel-to-world (RAS mm) affine."""

    array: np.ndarray       # (X, Y, Z), float32
    affine: np.ndarray      # (4, 4)
    path: str


def volume_format(path: str | Path) -> str:
    """``"nifti"``, ``"nrrd"`` or ``"dicom"`` (a folder), from the path; ValueError otherwise."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
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


def _reader(fmt: str):
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    from monai.data import NibabelReader, NrrdReader, PydicomReader

    if fmt == "nifti":
        return NibabelReader()
    if fmt == "nrrd":
        return NrrdReader()
    return PydicomReader()


def read_volume(path: str | Path) -> Volume:
    """Read one 3D volume (a 4D file with a single frame is squeezed).

    Raises :class:`VolumeReadError` naming the file and the fix for a missing, truncated or
    corrupt file, or one that is not 3D.
    """
    from monai.transforms import LoadImage

    p = Path(path)
    if not p.exists():
        raise VolumeReadError(f"{p}: file not found; check the path in the manifest")
    fmt = volume_format(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's optional-GPU-codec notices
            loader = LoadImage(reader=_reader(fmt), image_only=True, dtype=np.float32)
            img = loader(str(p))
            arr = np.asarray(img)  # forces decompression of lazily read data
    except Exception as e:  # the readers raise many types (EOFError, zlib.error, OSError, ...)
        raise VolumeReadError(
            f"{p}: unreadable or truncated {fmt} file ({type(e).__name__}: {e}); "
            "re-export or re-copy the file"
        ) from None
    arr = _as_3d(arr, p)
    affine = np.asarray(img.affine, dtype=np.float64) if hasattr(img, "affine") else np.eye(4)
    return Volume(arr.astype(np.float32, copy=False), affine, str(p))


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
    """Spatial shape from the header only (NIfTI and NRRD), else by reading the volume."""
    p = Path(path)
    fmt = volume_format(p)
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
