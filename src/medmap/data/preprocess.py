"""Volume preprocessing with MONAI transforms: reorientation, resampling, intensity, fixed size.

The pipeline (image) is::

    read_volume -> MetaTensor (1, X, Y, Z) + RAS affine
      -> Orientation(axcodes)                       # e.g. "RAS"
      -> Spacing(pixdim, mode="bilinear")           # skipped when spacing is None
      -> SpatialCrop(ROI bounding box + margin)     # only with roi_mask (an organ mask)
                                                    # ("mri" with intensity_scope "volume":
                                                    #  after the intensity step)
      -> intensity:  "mri": ClipIntensityPercentiles(p_lo, p_hi) + NormalizeIntensity(nonzero=True)
                     "mri_reference": divide by the mean signal of the reference tissue
                            (a shell around the ROI mask), clip at the high percentile
                     "ct":  ScaleIntensityRange(hu_lo, hu_hi -> 0, 1, clip=True)
      -> Resize(size, mode="trilinear")  or  ResizeWithPadOrCrop(size)

and returns a float32 ``torch.Tensor`` of shape ``(1, D, H, W) == (1, *cfg.size)`` whose three
spatial axes are the voxel axes of ``cfg.orientation`` (for "RAS": left->Right,
posterior->Anterior, inferior->Superior). Intensity is normalised *before* the final resize /
pad so zero padding means "background" (MRI: 0 after z-score; CT: 0 == the bottom of the HU
window, i.e. air), never "average tissue".

Masks (:meth:`Preprocessor.preprocess_mask`) go through the same geometry with nearest
interpolation and no intensity step, so a mask stored in the image's grid lands voxel-for-voxel
on the preprocessed image. :meth:`Preprocessor.invert` maps a preprocessed-space tensor (a CAM,
a predicted mask) back onto the voxel grid of the original file with MONAI's own inverse
transforms.

``"mri_reference"`` (reference-tissue normalisation) needs ``roi_mask``: MR signal has no
absolute scale, and a per-volume z-score also removes the ratio of a lesion's signal to the
tissue around it, the quantity radiologists read ("hyperintense to liver"). This mode divides
each volume by the mean signal of the tissue around the ROI (``reference="shell"``: a
``reference_mm`` shell outside the ROI mask, for lesion ROIs) or inside it (``"inside"``, for
organ ROIs), so a voxel value reads as its ratio to that tissue.

With ``roi_mask`` set (a manifest ``masks`` key such as ``"liver"``), every volume of a case is
cropped to the bounding box of that organ mask (plus ``roi_margin_mm``) before the intensity
step and the final resize, so a small organ fills the model's input instead of a few voxels of
it. The crop is part of the geometry: masks get the same crop, and :meth:`Preprocessor.invert`
pads a CAM back to the full scan. The ROI mask is then required at every call (``roi=``).

Example:
    >>> from medmap.data.preprocess import PreprocessConfig, Preprocessor
    >>> pre = Preprocessor(PreprocessConfig(size=(128, 128, 128), modality_intensity={"CT": "ct"}))
    >>> x = pre("case/T2WI.nii.gz", modality="T2WI")           # doctest: +SKIP
    >>> x.shape, x.dtype                                        # doctest: +SKIP
    (torch.Size([1, 128, 128, 128]), torch.float32)
    >>> cam_native = pre.invert(cam, "case/T2WI.nii.gz")        # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medmap.config import UserError
from medmap.data import io as mio
from medmap.data.io import Volume, VolumeReadError

IntensityMode = Literal["mri", "mri_reference", "ct"]
SizeMode = Literal["resize", "crop_pad"]

_INTENSITY_MODES = ("mri", "mri_reference", "ct")
_SIZE_MODES = ("resize", "crop_pad")
_AXIS_PAIRS = (("L", "R"), ("P", "A"), ("I", "S"))


def _tuple(v: Any, n: int, name: str, cast: type) -> tuple:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != n:
        raise ValueError(f"PreprocessConfig.{name} must be a sequence of {n} numbers, got {v!r}")
    try:
        return tuple(cast(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"PreprocessConfig.{name} must hold numbers, got {v!r}") from None


@dataclass
class PreprocessConfig:
    """Preprocessing settings; every field takes part in the cache key (see ``to_dict``).

    Attributes:
        spacing: target voxel size in mm along the oriented axes; ``None`` keeps the file's.
        size: output spatial size ``(D, H, W)``.
        size_mode: ``"resize"`` (interpolate to ``size``, changes the aspect ratio) or
            ``"crop_pad"`` (symmetric centre crop / zero pad, keeps the mm scale).
        orientation: MONAI axis codes, e.g. ``"RAS"``.
        intensity: default intensity mode, ``"mri"`` or ``"ct"``.
        percentiles: MRI clipping percentiles (of the whole resampled volume).
        hu_window: CT window ``(low, high)`` in HU, mapped to ``[0, 1]`` with clipping.
        modality_intensity: per-modality overrides, e.g. ``{"CT": "ct"}``.
        roi_mask: manifest ``masks`` key of an organ mask (e.g. ``"liver"``); volumes are
            cropped to its bounding box before the intensity step and the resize. ``None``: no
            crop.
        roi_margin_mm: margin around the ROI's bounding box, mm (clipped at the volume's edge).
        reference: the reference tissue of ``"mri_reference"``: ``"shell"`` around the ROI
            mask or ``"inside"`` it.
        reference_mm: thickness of the reference shell, mm.
        intensity_scope: where the ``"mri"`` z-score (and its clipping percentiles) takes its
            statistics: ``"crop"`` (the ROI crop, the default) or ``"volume"`` (the whole
            resampled volume, before the ROI crop: the lesion keeps its level against the whole
            scan, as brain-MRI pipelines z-score over the head). Without ``roi_mask`` the two
            are the same; ``"mri_reference"`` and ``"ct"`` do not depend on it.
    """

    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    size: tuple[int, int, int] = (128, 128, 128)
    size_mode: SizeMode = "resize"
    orientation: str = "RAS"
    intensity: IntensityMode = "mri"
    percentiles: tuple[float, float] = (0.5, 99.5)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    modality_intensity: dict[str, str] = field(default_factory=dict)
    roi_mask: str | None = None
    roi_margin_mm: float = 10.0
    reference: Literal["shell", "inside"] = "shell"
    reference_mm: float = 10.0
    intensity_scope: Literal["crop", "volume"] = "crop"

    def __post_init__(self) -> None:
        if self.spacing is not None:
            self.spacing = _tuple(self.spacing, 3, "spacing", float)
            if not all(np.isfinite(s) and s > 0 for s in self.spacing):
                raise ValueError(
                    f"PreprocessConfig.spacing must be positive mm, got {self.spacing}"
                )
        self.size = _tuple(self.size, 3, "size", int)
        if not all(s > 0 for s in self.size):
            raise ValueError(
                f"PreprocessConfig.size must be positive voxel counts, got {self.size}"
            )
        if self.size_mode not in _SIZE_MODES:
            raise ValueError(
                f"PreprocessConfig.size_mode {self.size_mode!r} unknown; use one of {_SIZE_MODES}"
            )
        codes = str(self.orientation).upper()
        axes = [next((i for i, pair in enumerate(_AXIS_PAIRS) if c in pair), -1) for c in codes]
        if len(codes) != 3 or sorted(axes) != [0, 1, 2]:
            raise ValueError(
                f"PreprocessConfig.orientation {self.orientation!r} is not a valid axis code; "
                "use three letters, one of L/R, P/A, I/S each, e.g. 'RAS' or 'LPS'"
            )
        self.orientation = codes
        self.percentiles = _tuple(self.percentiles, 2, "percentiles", float)
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                "PreprocessConfig.percentiles must satisfy 0 <= low < high <= 100, "
                f"got {self.percentiles}"
            )
        self.hu_window = _tuple(self.hu_window, 2, "hu_window", float)
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(
                f"PreprocessConfig.hu_window must be (low, high), got {self.hu_window}"
            )
        if self.intensity not in _INTENSITY_MODES:
            raise ValueError(
                f"PreprocessConfig.intensity {self.intensity!r} unknown; "
                f"use one of {_INTENSITY_MODES}"
            )
        if self.roi_mask is not None and (not isinstance(self.roi_mask, str)
                                          or not self.roi_mask.strip()):
            raise ValueError(f"PreprocessConfig.roi_mask must be a manifest masks key such as "
                             f"'liver', or null, got {self.roi_mask!r}")
        self.roi_margin_mm = float(self.roi_margin_mm)
        if not (np.isfinite(self.roi_margin_mm) and self.roi_margin_mm >= 0):
            raise ValueError(f"PreprocessConfig.roi_margin_mm must be >= 0 mm, "
                             f"got {self.roi_margin_mm}")
        if self.reference not in ("shell", "inside"):
            raise ValueError(f"PreprocessConfig.reference must be 'shell' or 'inside', got "
                             f"{self.reference!r}")
        self.reference_mm = float(self.reference_mm)
        if not (np.isfinite(self.reference_mm) and self.reference_mm > 0):
            raise ValueError(f"PreprocessConfig.reference_mm must be > 0 mm, got "
                             f"{self.reference_mm}")
        if self.intensity_scope not in ("crop", "volume"):
            raise ValueError(f"PreprocessConfig.intensity_scope must be 'crop' or 'volume', got "
                             f"{self.intensity_scope!r}")
        self.modality_intensity = dict(self.modality_intensity or {})
        for mod, mode in self.modality_intensity.items():
            if mode not in _INTENSITY_MODES:
                raise ValueError(
                    f"PreprocessConfig.modality_intensity[{mod!r}] = {mode!r} unknown; "
                    f"use one of {_INTENSITY_MODES}"
                )

        modes = {self.intensity, *self.modality_intensity.values()}
        if "mri_reference" in modes and self.roi_mask is None:
            raise ValueError("PreprocessConfig.intensity 'mri_reference' divides by the tissue "
                             "around the ROI mask; set roi_mask (e.g. 'lesion') or use 'mri'")

    def intensity_for(self, modality: str | None) -> str:
        """The intensity mode used for ``modality`` (its override, else ``intensity``)."""
        if modality is not None and modality in self.modality_intensity:
            return self.modality_intensity[modality]
        return self.intensity

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly dict (tuples as lists, keys sorted in the overrides)."""
        d = asdict(self)
        for k in ("spacing", "size", "percentiles", "hu_window"):
            if d[k] is not None:
                d[k] = list(d[k])
        d["modality_intensity"] = dict(sorted(d["modality_intensity"].items()))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming the allowed ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown PreprocessConfig field(s) {unknown}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**d)


def foreground_box(mask, margin: Sequence[int]) -> tuple[list[int], list[int]]:
    """The bounding box of ``mask`` (C, X, Y, Z) voxels > 0, widened by ``margin`` voxels per
    axis (not clipped to the volume): ``(start, end)``, ``([0, 0, 0], [0, 0, 0])`` when it is
    empty. The same box as MONAI's ``generate_spatial_bounding_box(mask, lambda a: a > 0,
    margin=margin)``, which took ~60% of the demo's preprocessing time (one ``torch.any``
    per slice through MetaTensor dispatch).

    Example:
        >>> m = np.zeros((1, 8, 8, 8)); m[0, 2:4, 3, 5:7] = 1
        >>> foreground_box(m, [1, 1, 1])
        ([1, 2, 4], [5, 5, 8])
    """
    fg = (np.asarray(mask) > 0).any(0)
    start, end = [0] * fg.ndim, [0] * fg.ndim
    for axis in range(fg.ndim):
        line = np.flatnonzero(fg.any(axis=tuple(a for a in range(fg.ndim) if a != axis)))
        if not line.size:
            return [0] * fg.ndim, [0] * fg.ndim
        start[axis] = int(line[0]) - int(margin[axis])
        end[axis] = int(line[-1]) + int(margin[axis]) + 1
    return start, end


class Preprocessor:
    """Callable turning a volume file (NIfTI / NRRD / DICOM folder) into a ``(1, *size)`` tensor.

    Instances are cheap, stateless between calls and picklable (DataLoader workers).
    """

    def __init__(self, cfg: PreprocessConfig | None = None):
        self.cfg = cfg if cfg is not None else PreprocessConfig()

    # ---- transform builders -----------------------------------------------------------------
    def _spatial_pre(self, mask: bool) -> list:
        from monai.transforms import Orientation, Spacing

        ts: list = [Orientation(axcodes=self.cfg.orientation, labels=_AXIS_PAIRS)]
        if self.cfg.spacing is not None:
            ts.append(Spacing(
                pixdim=self.cfg.spacing, mode="nearest" if mask else "bilinear",
                padding_mode="zeros" if mask else "border", dtype=np.float32,
            ))
        return ts

    def _spatial_post(self, mask: bool) -> list:
        from monai.transforms import Resize, ResizeWithPadOrCrop

        if self.cfg.size_mode == "crop_pad":
            return [ResizeWithPadOrCrop(self.cfg.size, mode="constant")]
        # "nearest-exact" (pixel-centre aligned); torch's legacy "nearest" shifts by ~half a voxel
        return [Resize(self.cfg.size, mode="nearest-exact" if mask else "trilinear",
                       align_corners=None if mask else False, anti_aliasing=False)]

    def _intensity(self, mode: str, reference=None) -> list:
        from monai.transforms import (
            ClipIntensityPercentiles,
            Lambda,
            NormalizeIntensity,
            ScaleIntensityRange,
        )

        if mode == "mri_reference":
            hi = self.cfg.percentiles[1]
            return [Lambda(lambda x: _reference_scaled(x, reference)),
                    ClipIntensityPercentiles(lower=None, upper=hi)]
        if mode == "ct":
            lo, hi = self.cfg.hu_window
            return [ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
        lo, hi = self.cfg.percentiles
        return [ClipIntensityPercentiles(lower=lo, upper=hi), NormalizeIntensity(nonzero=True)]

    def transform(self, modality: str | None = None, *, mask: bool = False, crop=None,
                  reference=None):
        """The MONAI ``Compose`` applied to a loaded channel-first MetaTensor.

        ``crop`` is the ROI ``SpatialCrop`` from :meth:`roi_crop` (``None``: no crop);
        ``reference`` the reference-tissue mask on the cropped grid (``"mri_reference"``)."""
        from monai.transforms import Compose

        mode = self.cfg.intensity_for(modality)
        mid = [] if mask else self._intensity(mode, reference)
        roi = [] if crop is None else [crop]
        if mode == "mri" and self.cfg.intensity_scope == "volume":   # z-score the whole scan
            return Compose(self._spatial_pre(mask) + mid + roi + self._spatial_post(mask))
        return Compose(self._spatial_pre(mask) + roi + mid + self._spatial_post(mask))

    def spatial_transform(self, *, mask: bool = False, crop=None):
        """Geometry-only ``Compose`` (same grid as :meth:`transform`); used by :meth:`invert`."""
        from monai.transforms import Compose

        roi = [] if crop is None else [crop]
        return Compose(self._spatial_pre(mask) + roi + self._spatial_post(mask))

    def roi_crop(self, img, roi: str | Path | Volume | None, *, oriented=None):
        """The ``SpatialCrop`` to the ROI mask's bounding box (+ margin) on ``img``'s grid after
        orientation and resampling; ``None`` when ``cfg.roi_mask`` is unset.

        ``img`` is a loaded MetaTensor (:meth:`load`); ``roi`` the organ mask file
        (``oriented``: that mask already on the grid, :meth:`_roi_on_grid`). Raises
        ValueError naming the file when the mask is required but missing, or empty.
        """
        from monai.data.utils import affine_to_spacing
        from monai.transforms import SpatialCrop

        key = self.cfg.roi_mask
        if key is None:
            return None
        name = img.meta.get("filename_or_obj", "<volume>")
        if roi is None:
            raise UserError(
                f"{name}: PreprocessConfig.roi_mask is {key!r}, so every volume is cropped to "
                f"its case's {key!r} mask, and none was given; add masks.{key} to the case in "
                "the manifest (predict: put the mask in the case folder or pass --roi), or set "
                "preprocess.roi_mask to null")
        r = oriented if oriented is not None else self._roi_on_grid(img, roi)
        spacing = affine_to_spacing(r.affine, r=3).tolist()
        margin = [int(np.ceil(self.cfg.roi_margin_mm / float(sp))) for sp in spacing]
        start, end = foreground_box(r, margin)
        if any(e <= s for s, e in zip(start, end)):
            raise UserError(
                f"{r.meta.get('filename_or_obj', roi)}: the {key!r} ROI mask is empty (no voxel "
                f"> 0) on the grid of {name}; check the mask, or set preprocess.roi_mask to null")
        return SpatialCrop(roi_start=start, roi_end=end)

    def _roi_on_grid(self, img, roi):
        """The ROI mask (a file, a :class:`Volume`) oriented and resampled like ``img``."""
        from monai.transforms import Compose

        return self._run(Compose(self._spatial_pre(mask=True)), self._onto_grid(self.load(roi), img))

    def _onto_grid(self, m, ref):
        """``m`` resampled (nearest) onto ``ref``'s voxel grid when the grids differ."""
        same = tuple(ref.shape[1:]) == tuple(m.shape[1:]) and torch.allclose(
            ref.affine.double(), m.affine.double(), atol=1e-4)
        if same:
            return m
        from monai.transforms import SpatialResample

        m = SpatialResample(mode="nearest", padding_mode="zeros", dtype=np.float32)(
            m, dst_affine=ref.affine, spatial_size=tuple(ref.shape[1:]))
        m.applied_operations.clear()
        return m

    # ---- loading ------------------------------------------------------------------------------
    @staticmethod
    def load(src: str | Path | Volume):
        """Read ``src`` into a channel-first MetaTensor ``(1, X, Y, Z)`` carrying its RAS affine.

        Raises :class:`~medmap.data.io.VolumeReadError` (a ValueError) naming the file for an
        unreadable file or one holding NaN/Inf voxels.
        """
        from monai.data import MetaTensor

        if isinstance(src, Volume):
            vol = src
        else:     # a case's ROI mask is read for every sequence: remembered (io.read_recent)
            vol = mio.read_recent(src)       # (reader-plugin chatter is filtered in io)
        arr = np.asarray(vol.array, dtype=np.float32)
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum()) - n_nan
            raise VolumeReadError(
                f"{vol.path}: volume holds {n_nan} NaN and {n_inf} Inf voxel(s) of {arr.size}; "
                "fix or re-export the file (e.g. replace non-finite voxels with 0)"
            )
        return MetaTensor(
            torch.from_numpy(np.ascontiguousarray(arr))[None],
            affine=torch.as_tensor(np.asarray(vol.affine, dtype=np.float64)),
            meta={"filename_or_obj": str(vol.path)},
        )

    # ---- public API ---------------------------------------------------------------------------
    def __call__(self, src: str | Path | Volume, modality: str | None = None,
                 roi: str | Path | Volume | None = None) -> torch.Tensor:
        """Preprocess one image volume -> float32 tensor ``(1, *cfg.size)``.

        ``roi``: the case's organ mask, required when ``cfg.roi_mask`` is set."""
        img = self.load(src)
        # the mask on the image's grid once, for the crop and for the reference tissue
        oriented = (self._roi_on_grid(img, roi) if roi is not None
                    and self.cfg.roi_mask is not None else None)
        crop = self.roi_crop(img, roi, oriented=oriented)
        ref = None
        if self.cfg.intensity_for(modality) == "mri_reference":
            ref = self.reference_mask(img, roi, crop, oriented=oriented)
        out = self._run(self.transform(modality, crop=crop, reference=ref), img)
        return _finish(out, img, "image")

    def reference_mask(self, img, roi, crop, *, oriented=None) -> torch.Tensor:
        """The reference tissue of ``"mri_reference"`` on ``img``'s oriented, resampled and
        cropped grid: (1, x, y, z) bool, a ``reference_mm`` shell outside the ROI mask
        (``reference="shell"``) or the ROI mask itself (``"inside"``); ``oriented``: the ROI
        mask already on ``img``'s grid (:meth:`_roi_on_grid`)."""
        from monai.data.utils import affine_to_spacing
        from monai.transforms import Compose
        from scipy import ndimage as ndi

        if oriented is not None and crop is not None:
            r = self._run(crop, oriented)
        else:
            r = self._run(Compose(self._spatial_pre(mask=True) + [crop]),
                          self._onto_grid(self.load(roi), img))
        inside = np.asarray(r[0]) > 0
        if self.cfg.reference == "inside":
            return torch.from_numpy(inside)[None]
        spacing = affine_to_spacing(r.affine, r=3).tolist()
        k = [max(1, int(round(self.cfg.reference_mm / float(sp)))) for sp in spacing]
        ball = np.zeros([2 * x + 1 for x in k], bool)
        zz, yy, xx = np.ogrid[tuple(slice(-x, x + 1) for x in k)]
        ball[(zz / k[0]) ** 2 + (yy / k[1]) ** 2 + (xx / k[2]) ** 2 <= 1.0] = True
        shell = ndi.binary_dilation(inside, structure=ball) & ~inside
        return torch.from_numpy(shell)[None]

    def preprocess_mask(
        self, src: str | Path | Volume, reference: str | Path | Volume | None = None,
        roi: str | Path | Volume | None = None,
    ) -> torch.Tensor:
        """Preprocess a label mask with nearest interpolation -> float32 ``(1, *cfg.size)``.

        Label values are kept (not binarised). If ``reference`` (the image the mask belongs to)
        is given and its grid differs from the mask's, the mask is first resampled onto the
        reference grid (nearest) so that it matches ``self(reference)`` voxel for voxel.
        """
        m = self.load(src)
        if reference is not None:
            m = self._onto_grid(m, self.load(reference))
        out = self._run(self.transform(mask=True, crop=self.roi_crop(m, roi)), m)
        return _finish(out, m, "mask")

    def invert(
        self,
        tensor: torch.Tensor,
        reference: str | Path | Volume,
        *,
        mask: bool = False,
        roi: str | Path | Volume | None = None,
    ):
        """Map a preprocessed-space tensor back to the voxel grid of ``reference``.

        ``tensor`` is ``(D, H, W)`` or ``(C, D, H, W)`` with ``(D, H, W) == cfg.size`` (a CAM, a
        predicted mask, ...). ``reference`` is the original file (or :class:`Volume`) the tensor
        was computed from (``roi``: its organ mask when ``cfg.roi_mask`` is set; the crop is
        undone by zero padding). The geometry of the forward pass is replayed on the reference and
        MONAI's ``Compose.inverse`` undoes it (interpolation: bilinear, or nearest with
        ``mask=True``).

        Returns a MetaTensor ``(C, X, Y, Z)`` in the reference's voxel order whose ``.affine``
        is the reference's RAS affine (write it with e.g.
        ``nib.Nifti1Image(out[0].numpy(), out.affine.numpy())``).
        """
        from monai.data import MetaTensor

        t = torch.as_tensor(tensor).detach().to("cpu", torch.float32)
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or tuple(t.shape[1:]) != tuple(self.cfg.size):
            raise ValueError(
                f"invert expects a (C, {', '.join(map(str, self.cfg.size))}) or "
                f"({', '.join(map(str, self.cfg.size))}) tensor, got {tuple(t.shape)}"
            )
        ref = self.load(reference)
        xform = self.spatial_transform(mask=mask, crop=self.roi_crop(ref, roi))
        fwd = self._run(xform, ref)
        meta = {k: v for k, v in fwd.meta.items() if k != "affine"}
        moved = MetaTensor(t.clone(), affine=fwd.affine.clone(), meta=meta)
        moved.applied_operations = [dict(op) for op in fwd.applied_operations]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = xform.inverse(moved)
        return out

    @staticmethod
    def _run(xform, img):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI deprecation chatter
            return xform(img)


def _reference_scaled(x, reference: torch.Tensor | None):
    """``x`` divided by the mean of its reference-tissue voxels (the whole volume's mean
    when the reference is empty or not positive)."""
    ref = x[reference] if reference is not None and bool(reference.any()) else x
    scale = float(ref.mean())
    if not scale > 1e-6:
        scale = float(x.abs().mean()) or 1.0
    return x / scale


def _finish(out, src, what: str) -> torch.Tensor:
    t = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
    t = t.to(torch.float32).contiguous()
    if not torch.isfinite(t).all():
        name = src.meta.get("filename_or_obj", "<volume>") if hasattr(src, "meta") else "<volume>"
        raise VolumeReadError(f"{name}: preprocessing produced non-finite values in the "
                              f"{what}; check the file's intensities and the PreprocessConfig")
    return t


__all__ = ["PreprocessConfig", "Preprocessor", "IntensityMode", "SizeMode", "foreground_box"]
