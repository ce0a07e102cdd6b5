"""Brain generator, template anatomy: nilearn's MNI152 head resampled to the simulation cube.

nilearn's bundled MNI152 (ICBM 2009a) T1 template, brain mask and grey / white matter
probability maps are read from the package files (no download, :func:`_mni_1mm`) and resampled
once per process and size (:func:`anatomy`) to a ``size``^3 cube of side :data:`HEAD_SIDE_MM`.
CSF is brain mask minus GM minus WM; a layered extra-cerebral shell (CSF, dura, inner table,
diploe, outer table, scalp; :data:`_SHELL_MM`) is grown outside the mask by distance, plus
falx, venous sinuses, cortical vessels and choroid plexus. The result, an :class:`Anatomy`,
also carries the distance maps and the candidate voxels where intra-axial lesions may sit.
The per-subject warp is drawn later, in :func:`~medmap.data.sim.brain.simulate_case`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from medmap.data.sim.brain.specs import _GM, _WM
from medmap.data.sim.common import smooth_noise, soft_step

HEAD_SIDE_MM = 216.0                                   # side of the simulated cube, mm
_CENTRE_MNI = np.array([0.0, -17.0, 8.0], np.float32)  # MNI point at the cube's centre
_WORK_MM = 2.0                                         # grid on which the head shell is built

# Shell boundaries outside the brain mask, mm: ext. CSF | dura | inner table | diploe | outer
# table | scalp | air.
_SHELL_MM = (1.2, 2.4, 4.2, 8.0, 9.5, 15.0)


# --------------------------------------------------------------------------------------------
# Anatomy (cached per process and size)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Template anatomy on a ``size``^3 cube (RAS: axis 0 = x L->R, 1 = y P->A, 2 = z I->S).

    ``tissue`` stacks the partial-volume fractions of :data:`TISSUES`; ``brain`` is the MNI brain
    mask fraction; ``depth_mm`` / ``out_mm`` are distances inside / outside the brain mask.
    Voxel ``i`` sits at MNI ``origin_mni + i * spacing``.
    """

    size: int
    spacing: float
    origin_mni: np.ndarray
    tissue: np.ndarray      # (len(TISSUES), S, S, S) float32
    brain: np.ndarray       # (S, S, S) float32
    depth_mm: np.ndarray    # (S, S, S) float32, 0 outside the brain
    out_mm: np.ndarray      # (S, S, S) float32, 0 inside the brain
    vent_mm: np.ndarray     # (S, S, S) float32, distance to the lateral ventricles
    grid: np.ndarray        # (3, S, S, S) float32 voxel coordinates
    deep_wm: np.ndarray     # (n, 3) voxel indices: cerebral white matter
    junction: np.ndarray    # (n, 3) voxel indices: grey-white junction

    def vox_to_mni(self, p) -> np.ndarray:
        return self.origin_mni + np.asarray(p, np.float32) * self.spacing

    def mni_to_vox(self, mni) -> np.ndarray:
        return (np.asarray(mni, np.float32) - self.origin_mni) / self.spacing


def _nilearn_data_file(name: str) -> Path | None:
    spec = importlib.util.find_spec("nilearn")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "datasets" / "data" / name
        if p.exists():
            return p
    return None


@lru_cache(maxsize=1)
def _mni_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(brain mask, GM, WM, affine) of nilearn's MNI152 templates at 1 mm, all offline.

    Reads the very files behind ``nilearn.datasets.load_mni152_template`` /
    ``load_mni152_gm_template`` / ``load_mni152_wm_template`` with nibabel (importing
    ``nilearn.datasets`` costs seconds per worker process) and applies the same rescaling;
    the brain mask is ``load_mni152_brain_mask``'s definition (T1 / max > 0.2).
    Falls back to the nilearn loaders if the files moved.
    """
    names = (
        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    )
    paths = [_nilearn_data_file(n) for n in names]
    if all(paths):
        import nibabel as nib

        imgs = [nib.load(str(p)) for p in paths]
        arrs = [np.asarray(i.dataobj, dtype=np.float32) for i in imgs]
        affine = imgs[0].affine
    else:  # pragma: no cover - depends on the nilearn install layout
        from nilearn import datasets

        imgs = [datasets.load_mni152_template(resolution=1),
                datasets.load_mni152_gm_template(resolution=1),
                datasets.load_mni152_wm_template(resolution=1)]
        arrs = [i.get_fdata(dtype=np.float32) for i in imgs]
        affine = imgs[0].affine
    t1, gm, wm = (a / a.max() for a in arrs)
    brain = (t1 > 0.2).astype(np.float32)
    if not np.allclose(np.abs(np.diag(affine)[:3]), 1.0) or np.any(np.diag(affine)[:3] < 0):
        raise RuntimeError("unexpected MNI152 template affine (expected 1 mm RAS)")
    return brain, gm, wm, np.asarray(affine, np.float64)


def _resample(vol: np.ndarray, index_coords: list[np.ndarray], sigma: float) -> np.ndarray:
    """Sample ``vol`` on a regular grid given per-axis index vectors (anti-aliased, linear)."""
    src = ndimage.gaussian_filter(vol, sigma) if sigma > 0.3 else vol
    mesh = np.meshgrid(*index_coords, indexing="ij")
    return ndimage.map_coordinates(src, mesh, order=1, mode="constant", cval=0.0).astype(np.float32)


@lru_cache(maxsize=4)
def anatomy(size: int) -> Anatomy:
    """The template anatomy on a ``size``^3 cube (computed once per process and size)."""
    brain1, gm1, wm1, aff = _mni_1mm()
    lo_mni = _CENTRE_MNI - HEAD_SIDE_MM / 2
    # -- working grid (2 mm) on which the shell, falx and vessels are built
    w = min(_WORK_MM, HEAD_SIDE_MM / size)
    nw = int(round(HEAD_SIDE_MM / w))
    mni_w = [lo_mni[a] + (np.arange(nw, dtype=np.float32) + 0.5) * w for a in range(3)]
    idx_w = [(mni_w[a] - aff[a, 3]) / aff[a, a] for a in range(3)]
    sig1 = 0.42 * w if w > 1.2 else 0.0
    brain = _resample(brain1, idx_w, sig1)
    gm = _resample(gm1, idx_w, sig1)
    wm = _resample(wm1, idx_w, sig1)
    gm, wm = np.minimum(gm, brain), np.minimum(wm, brain)
    over = gm + wm
    scale = np.where(over > brain, brain / np.maximum(over, 1e-6), 1.0)
    gm, wm = gm * scale, wm * scale
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    inside = brain >= 0.5
    depth = np.maximum(ndimage.distance_transform_edt(inside) * w - w / 2, 0).astype(np.float32)
    out = np.maximum(ndimage.distance_transform_edt(~inside) * w - w / 2, 0).astype(np.float32)
    # skull thickness varies smoothly over the head (fixed "template" pattern)
    fixed = np.random.default_rng(20240527)
    thick = 1.0 + 0.15 * np.clip(smooth_noise(fixed, brain.shape, 12.0 / w), -2, 2)
    bounds = [b * (thick if k > 0 else 1.0) for k, b in enumerate(_SHELL_MM)]
    steps = [np.ones_like(out)] + [soft_step(out - b, w) for b in bounds]
    outside = 1.0 - brain
    layers = [outside * (steps[k] - steps[k + 1]) for k in range(len(bounds))]
    ext_csf, dura, inner, diploe, outer, scalp = layers
    bone = inner + outer
    csf = csf + ext_csf
    X, Y, Z = np.meshgrid(*mni_w, indexing="ij")
    # falx: dural sheet in the interhemispheric fissure above the corpus callosum
    falx = np.clip(1.0 - np.abs(X) / w, 0, 1) * np.clip(2.0 * csf, 0, 1) * (Z > 12) * (Y > -100)
    falx = np.minimum(0.6 * falx, csf)
    csf, dura = csf - falx, dura + falx
    # venous sinuses (superior sagittal, transverse) and sulcal cortical vessels
    sss = (np.abs(X) < 5) * (Z > 25) * (out > 0.3) * (out < 5.0) * (Y > -105)
    trans = (np.abs(X) > 8) * (Y < -78) * (Z > -28) * (Z < 0) * (out > 0.3) * (out < 5.0)
    cortical = (smooth_noise(fixed, brain.shape, 1.0) > 2.3) * (depth < 10) * (depth > 0)
    vessel = np.clip(0.8 * (sss + trans) * (csf + dura) + 0.7 * cortical * csf, 0, None)
    pool = csf + dura + 1e-6
    csf, dura = csf - vessel * csf / pool, dura - vessel * dura / pool
    # choroid plexus in the atria of the lateral ventricles
    vent = csf * (depth > 14)
    bump = np.exp(-((np.abs(X) - 27) ** 2 + (Y + 38) ** 2 + (Z - 14) ** 2) / (2 * 8.0 ** 2))
    choroid = 0.8 * vent * bump
    csf = csf - choroid
    stack = np.stack([gm, wm, csf, dura, bone, diploe, scalp, vessel, choroid]).astype(np.float32)
    stack = np.clip(stack, 0, 1)
    # -- resample the working grid to the output cube
    s = HEAD_SIDE_MM / size
    idx_o = [(np.arange(size, dtype=np.float32) + 0.5) * s / w - 0.5] * 3
    sig = 0.42 * s / w if s > 1.2 * w else 0.0
    tissue = np.stack([_resample(t, idx_o, sig) for t in stack])
    brain_o = _resample(brain, idx_o, sig)
    depth_o = _resample(depth, idx_o, 0.0)
    out_o = _resample(out, idx_o, 0.0)
    vent_d = ndimage.distance_transform_edt(~((csf > 0.5) & (depth > 12))) * w
    vent_o = _resample(vent_d.astype(np.float32), idx_o, 0.0)
    origin = (lo_mni + 0.5 * s).astype(np.float32)
    grid = np.indices((size,) * 3, dtype=np.float32)
    # lesion-site candidates (voxel indices)
    mni = [origin[a] + np.arange(size, dtype=np.float32) * s for a in range(3)]
    xo, yo, zo = np.meshgrid(*mni, indexing="ij")
    cerebral = (zo > -18) & ~((np.abs(xo) < 16) & (zo < 8) & (yo < -5) & (yo > -45))
    cerebral &= ~((np.abs(xo) < 22) & (np.abs(yo + 15) < 22) & (np.abs(zo - 5) < 14))  # deep GM
    deep_wm = np.argwhere((tissue[_WM] > 0.45) & (depth_o > 8) & cerebral)
    gwj = (tissue[_WM] > 0.2) & (tissue[_GM] > 0.3) & (tissue[_GM] < 0.75) & (depth_o > 3)
    gwj &= cerebral | ((zo < -20) & (yo < -50) & (np.abs(xo) > 12))   # or cerebellar hemisphere
    junction = np.argwhere(gwj)
    for a in (tissue, brain_o, depth_o, out_o, vent_o, grid, deep_wm, junction):
        a.setflags(write=False)
    return Anatomy(size, s, origin, tissue, brain_o, depth_o, out_o, vent_o, grid, deep_wm,
                   junction)
