"""MedMoM-Sim brain generator: T1WI / T1C / T2WI / T2FLAIR on warped MNI152 anatomy.

Anatomy is real: nilearn's bundled MNI152 (ICBM 2009a) T1 template, brain mask and grey / white
matter probability maps (read from the package files, no download) are resampled once per process
to a ``size``^3 cube of side :data:`HEAD_SIDE_MM` covering the head. CSF is brain mask minus GM
minus WM; a layered extra-cerebral shell (CSF, dura, inner table, diploe, outer table, scalp) is
grown outside the mask by distance, plus falx, venous sinuses, cortical vessels and choroid plexus
(which enhance on T1C). Every subject gets a random smooth deformation and a small global scaling.

Classes (see :data:`DATASHEET`):

* ``benign`` -- meningioma-like: extra-axial dural-based dome (convexity, parasagittal / falx or
  skull base) that displaces the brain, avid (mostly homogeneous) enhancement, often a dural
  tail, sometimes a CSF cleft, iso / slightly hyperintense on T2, no or mild FLAIR oedema.
* ``malignant`` -- high-grade glioma (one irregular intra-axial white-matter mass) or 1-3
  metastases at the grey-white junction: thick irregular ring enhancement around a necrotic core
  (dark T1, bright T2), surrounding vasogenic oedema bright on FLAIR / T2.

Overlap is deliberate and tunable through :data:`P` (patchy calcified meningiomas, meningiomas
with oedema or T2-bright, solid / oedema-poor / superficial malignant lesions; each cue drawn
independently), so single sequences are ambiguous and combining them helps.

Example:
    >>> import numpy as np
    >>> from medmap.data.sim.common import SimConfig
    >>> case = simulate_case(np.random.default_rng(0), "benign", SimConfig(size=48))
    >>> sorted(case.volumes), case.mask.shape
    (['T1C', 'T1WI', 'T2FLAIR', 'T2WI'], (48, 48, 48))
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from medmap.data.sim.common import (
    SimCase,
    SimConfig,
    apply_artefacts,
    ellipsoid,
    pick,
    smooth_noise,
)
from medmap.data.vocab import BRAIN

__all__ = ["simulate_case", "DATASHEET", "SEQUENCES", "HEAD_SIDE_MM", "Anatomy", "anatomy"]

SEQUENCES = ("T1WI", "T1C", "T2WI", "T2FLAIR")
HEAD_SIDE_MM = 216.0                                   # side of the simulated cube, mm
_CENTRE_MNI = np.array([0.0, -17.0, 8.0], np.float32)  # MNI point at the cube's centre
_WORK_MM = 2.0                                         # grid on which the head shell is built

# Tissue classes of the anatomy stack, and their clean signal per sequence (~1 = brightest).
TISSUES = ("gm", "wm", "csf", "dura", "bone", "marrow", "scalp", "vessel", "choroid")
_SIGNAL = np.array(
    [
        # gm    wm    csf   dura  bone  marrow scalp vessel choroid
        [0.60, 0.85, 0.18, 0.40, 0.05, 0.80, 0.90, 0.30, 0.50],  # T1WI
        [0.62, 0.86, 0.18, 0.72, 0.05, 0.84, 0.92, 0.95, 0.90],  # T1C (dura, vessels, choroid)
        [0.62, 0.45, 1.00, 0.30, 0.04, 0.55, 0.65, 0.10, 0.70],  # T2WI
        [0.72, 0.50, 0.08, 0.35, 0.04, 0.55, 0.70, 0.10, 0.45],  # T2FLAIR (CSF nulled)
    ],
    np.float32,
)
_GM, _WM, _CSF, _MARROW, _SCALP = 0, 1, 2, 5, 6

# Class-signature probabilities (the overlap knobs; see DATASHEET).
P = {
    "men_embed": (0.0, 0.7),      # meningioma: how deep the dome indents the brain (x a)
    "men_hetero": 0.3,            # heterogeneous meningioma (patchy enhancement, calcification)
    "men_oedema": (0.55, 0.35, 0.1),  # meningioma oedema: none, mild, moderate
    "tumour_t1": (0.65, 1.2),     # T1 of solid tumour / grey matter (both classes)
    "men_enhancement": (2.3, 2.8),  # T1C / T1 of the tumour: avid, meningioma
    "malig_enhancement": (1.6, 2.1),  # ... enhancing rim / solid part of malignant lesions
    "men_cleft": 0.35,            # CSF cleft between meningioma and brain
    "men_t2_bright": 0.2,         # T2-hyperintense (microcystic / angiomatous-like) meningioma
    "glioma": 0.5,                # malignant: glioma vs metastases
    "glioma_site": (0.4, 0.25, 0.35),  # glioma: superficial (cortex), periventricular, deep
    "malig_t2_bright": 0.6,       # T2-hyperintense solid tumour (else iso, like a meningioma)
    "haemorrhage": 0.3,           # malignant: T1-bright haemorrhagic foci
    "glioma_necrosis": 0.55,      # ring enhancement around necrosis (else solid)
    "met_necrosis": 0.5, 
    "met_count": (0.6, 0.25, 0.15),  # 1, 2 or 3 metastases
    "malig_oedema": 0.6,          # extensive vs minimal vasogenic oedema
    "texture": 0.08,              # max internal texture amplitude, drawn per sequence
    "fat_sat": 0.35,              # per sequence: fat-suppressed acquisition
    "flair_csf": (0.04, 0.3),     # FLAIR CSF signal (inversion imperfect, inflow)
    "contrast_jitter": 0.08,      # per-case, per-tissue, per-sequence signal jitter (log std)
    "gain": 0.1,                  # per-case, per-sequence global gain (log std)
}
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


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
    return np.clip(x / width + 0.5, 0.0, 1.0)


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
    steps = [np.ones_like(out)] + [_soft_step(out - b, w) for b in bounds]
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


# --------------------------------------------------------------------------------------------
# Smooth random fields
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _upsampler(n: int, size: int) -> np.ndarray:
    """(size, n) Gaussian interpolation weights from an n-node coarse lattice to ``size`` points."""
    pos = np.linspace(0, n - 1, size)
    w = np.exp(-((pos[:, None] - np.arange(n)[None, :]) ** 2) / (2 * 0.75 ** 2))
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _coarse_field(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """Unit-std smooth random field on the cube: ``smooth_noise`` on an n^3 lattice, upsampled
    separably (three small matrix products instead of a big Gaussian filter)."""
    c = smooth_noise(rng, (n, n, n), 0.8)
    m = _upsampler(n, size)
    f = np.tensordot(m, c, axes=(1, 0))                     # (S, n, n)
    f = np.tensordot(f, m, axes=(2, 1))                     # (S, n, S)
    f = np.matmul(m, f)                                     # (S, S, S), batched over axis 0
    return ((f - f.mean()) / (f.std() + 1e-8)).astype(np.float32)


def _lobulation(rng: np.random.Generator, amp: float, order: int = 3):
    """Random smooth function of direction (unit vectors ``u``, shape (3, ...)) in [-amp, amp]."""
    k = rng.standard_normal((order, 3))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    freq = rng.integers(1, 4, order)
    phase = rng.uniform(0, 2 * np.pi, order)
    wts = rng.uniform(0.5, 1.0, order)
    wts = amp * wts / wts.sum()

    def f(u: np.ndarray) -> np.ndarray:
        out = np.zeros(u.shape[1:], np.float32)
        for j in range(order):
            out += wts[j] * np.cos(np.pi * freq[j] * np.tensordot(k[j], u, axes=(0, 0)) + phase[j])
        return out

    return f


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _frame(n: np.ndarray) -> np.ndarray:
    """Rows: n and two unit vectors orthogonal to it."""
    a = np.array([1.0, 0, 0]) if abs(n[0]) < 0.9 else np.array([0, 1.0, 0])
    t1 = np.cross(n, a)
    t1 /= np.linalg.norm(t1)
    return np.stack([n, t1, np.cross(n, t1)]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Lesion planning (template voxel coordinates)
# --------------------------------------------------------------------------------------------


def _sample(vol: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``vol`` at points ``p`` (n, 3), voxel units."""
    return ndimage.map_coordinates(vol, p.T, order=1, mode="nearest")


def _normal(anat: Anatomy, p: np.ndarray) -> np.ndarray:
    """Outward normal of the brain mask at voxel point ``p``."""
    h = 1.0
    offs = np.vstack([np.eye(3), -np.eye(3)]) * h
    v = _sample(anat.brain, p[None] + offs)
    g = -(v[:3] - v[3:])
    nrm = np.linalg.norm(g)
    return (g / nrm).astype(np.float32) if nrm > 1e-6 else None


def _ray_exit(anat: Anatomy, start_mni, direction, first: bool) -> np.ndarray | None:
    """Brain-surface point (voxel coords) where a ray from ``start_mni`` leaves the brain mask."""
    d = np.asarray(direction, np.float32)
    d /= np.linalg.norm(d)
    ts = np.arange(0, 140, 0.5 * anat.spacing, dtype=np.float32)
    pts = anat.mni_to_vox(np.asarray(start_mni, np.float32)[None] + ts[:, None] * d[None])
    v = _sample(anat.brain, pts) >= 0.5
    if not v.any():
        return None
    if first:
        start = int(np.argmax(v))
        off = np.flatnonzero(~v[start:])
        if off.size == 0:
            return None
        k = start + int(off[0]) - 1
    else:
        k = int(np.flatnonzero(v)[-1])
    return pts[k]


def _benign_site(rng: np.random.Generator, anat: Anatomy) -> tuple[str, np.ndarray, np.ndarray]:
    """(site kind, surface point in voxels, outward normal) of a dural attachment."""
    for _ in range(50):
        u = rng.random()
        if u < 0.5:
            kind = "convexity"
            az = rng.uniform(0, 2 * np.pi)
            el = np.deg2rad(rng.uniform(-5, 60))
            d = [np.cos(el) * np.cos(az), 1.15 * np.cos(el) * np.sin(az), np.sin(el)]
            p = _ray_exit(anat, [0.0, -18.0, 15.0], d, first=False)
            n = _normal(anat, p) if p is not None else None
        elif u < 0.75:
            kind = "falx"
            side = rng.choice([-1.0, 1.0])
            y = rng.uniform(-65, 35)
            top = _ray_exit(anat, [side * 6.0, y, 20.0], [0, 0, 1], first=True)
            if top is None:
                continue
            z = anat.vox_to_mni(top)[2] - rng.uniform(8, 28)
            if z < 28:
                continue
            p = anat.mni_to_vox([side * 1.0, y, z])
            n = np.array([-side, 0.0, 0.0], np.float32)
        else:
            kind = "skull_base"
            if rng.random() < 0.4:
                x, y = rng.uniform(-12, 12), rng.uniform(15, 45)
            else:
                x, y = rng.choice([-1.0, 1.0]) * rng.uniform(22, 44), rng.uniform(-2, 14)
            p = _ray_exit(anat, [x, y, 25.0], [0, 0, -1], first=True)
            n = _normal(anat, p) if p is not None else None
            if n is not None and n[2] > -0.3:  # must face the skull base
                continue
        if p is None or n is None:
            continue
        if np.any(p < 4) or np.any(p > anat.size - 5):
            continue
        return kind, p.astype(np.float32), n
    # fallback: vertex convexity
    p = _ray_exit(anat, [20.0, -18.0, 15.0], [0.3, 0.0, 1.0], first=False)
    n = _normal(anat, p)
    if n is None:
        n = np.array([0.29, 0.0, 0.96], np.float32)
    return "convexity", p.astype(np.float32), n


def _draw(rng: np.random.Generator, idx: np.ndarray, anat: Anatomy, depth_mm: tuple,
          avoid: list[np.ndarray], min_sep: float) -> np.ndarray:
    """A candidate voxel (jittered) whose depth below the brain surface is within ``depth_mm``."""
    dep = anat.depth_mm[tuple(idx.T)]
    ok = (dep >= depth_mm[0]) & (dep <= depth_mm[1])
    if ok.sum() < 10:
        ok = dep >= depth_mm[0]
    cand = idx[ok] if ok.sum() >= 10 else idx
    for _ in range(100):
        p = cand[int(rng.integers(len(cand)))].astype(np.float32) + rng.uniform(-0.5, 0.5, 3)
        if all(np.linalg.norm(p - q) >= min_sep for q in avoid):
            return p.astype(np.float32)
    return p.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Reporting helpers
# --------------------------------------------------------------------------------------------


def _side(x: float) -> str:
    return "right" if x > 5 else "left" if x < -5 else "midline"


def _lobe(x: float, y: float, z: float) -> str:
    if z < -18 and y < -48:
        return "cerebellar"
    if y < -72:
        return "occipital"
    if z < 6 and abs(x) > 28 and -72 <= y < 18:
        return "temporal"
    if y >= -22:
        return "frontal"
    return "parietal"


def _where(lesion: dict) -> str:
    x, y, z = lesion["centre_mni"]
    side, lobe = _side(x), _lobe(x, y, z)
    side = side if side != "midline" else "left" if x < 0 else "right"
    kind = lesion["site"]
    if kind == "convexity":
        return f"{side} {lobe} convexity" if lobe != "cerebellar" else f"{side} posterior fossa"
    if kind == "falx":
        return f"{side} parasagittal {lobe} region, attached to the falx"
    if kind == "skull_base":
        if abs(x) < 15:
            return "olfactory groove / planum sphenoidale"
        return f"{side} sphenoid wing" if y > -2 else f"{side} middle cranial fossa"
    if lobe == "cerebellar":
        return f"{side} cerebellar hemisphere"
    if kind == "junction":
        return f"{side} {lobe} lobe at the grey-white junction"
    deep = lesion.get("depth_mm", 0) > 25
    return f"{side} {lobe} {'deep ' if deep else ''}white matter"


def _dims(lesion: dict) -> str:
    a, b, c = lesion["size_mm"]  # (x, y, z) extents
    return f"{b:.0f} x {a:.0f} x {c:.0f} mm"


def _largest(lesions: list[dict]) -> dict:
    return max(lesions, key=lambda d: np.prod(d["size_mm"]))


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


def simulate_case(rng: np.random.Generator, label: str, cfg: SimConfig) -> SimCase:
    """One brain study: 4 sequences on a warped MNI152 head, lesion mask, per-sequence reports."""
    BRAIN.class_index(label)
    S = int(cfg.size)
    anat = anatomy(S)
    s = anat.spacing
    lo_r, hi_r = cfg.lesion_radius_mm

    # ---- subject: smooth deformation + small global scaling (output voxel -> template voxel)
    scale = float(rng.uniform(0.93, 1.07)) * (1 + rng.uniform(-0.03, 0.03, 3))
    deform_mm = float(rng.uniform(1.5, 3.0))
    n_lat = 7
    disp = np.stack([_coarse_field(rng, S, n_lat) for _ in range(3)]) * (deform_mm / s)
    cg = np.float32((S - 1) / 2)

    def to_template(p: np.ndarray) -> np.ndarray:  # point(s) (..., 3), ignoring the mass effect
        p = np.asarray(p, np.float32)
        ii = np.clip(np.rint(p).astype(int), 0, S - 1)
        d = disp[(slice(None),) + tuple(np.moveaxis(ii, -1, 0))]
        return cg + (p - cg) * scale + np.moveaxis(d, 0, -1)

    def to_output(q: np.ndarray) -> np.ndarray:  # approximate inverse of to_template
        p = cg + (q - cg) / scale
        for _ in range(2):
            p = p - (to_template(p) - q) / scale
        return p.astype(np.float32)

    # ---- lesion plan
    lesions: list[dict] = []
    if label == "benign":
        subtype = "meningioma"
        kind, surf, n = _benign_site(rng, anat)
        R = rng.uniform(lo_r, hi_r)
        hetero = rng.random() < P["men_hetero"]
        oed = rng.choice(["none", "mild", "moderate"], p=P["men_oedema"])
        # dural attachment at ~1.5 mm outside the brain; the dome's centre sits ``base`` * a
        # below it: small base = flat en-plaque dome, large base = globular mass indenting
        # the brain through a narrow dural attachment
        a_mm = R * rng.uniform(0.8, 1.05)
        base = rng.uniform(*P["men_embed"])
        anchor_t = surf + n * (rng.uniform(1.0, 2.0) / s)
        lesions.append(dict(
            site=kind, kind="extra", centre_t=anchor_t, normal=n, R=R,
            a=a_mm, b=R * rng.uniform(1.0, 1.3), c=R * rng.uniform(0.95, 1.25),
            base=base, lob=rng.uniform(0.03, 0.1), hetero=hetero,
            necrosis=False, calcified=hetero and rng.random() < 0.8, haemorrhage=False,
            t2_bright=rng.random() < P["men_t2_bright"],
            oedema=str(oed), tail=rng.random() < 0.6, cleft=rng.random() < P["men_cleft"],
            push=rng.uniform(0.75, 0.95),
        ))
    else:
        subtype = "glioma" if rng.random() < P["glioma"] else "metastases"
        if subtype == "glioma":
            R = rng.uniform(lo_r + 0.3 * (hi_r - lo_r), hi_r)
            where = rng.choice(3, p=P["glioma_site"])  # superficial, periventricular, deep
            if where == 1:
                near = anat.deep_wm[anat.vent_mm[tuple(anat.deep_wm.T)] < 0.6 * R + 3]
                c = _draw(rng, near if len(near) > 10 else anat.deep_wm, anat, (R, 90), [], 0)
            else:
                depth = (0.4 * R, R + 4) if where == 0 else (R + 4, 90)
                c = _draw(rng, anat.deep_wm, anat, depth, [], 0)
            lesions.append(dict(
                site="wm", kind="intra", centre_t=c, R=R, axes=rng.uniform(0.8, 1.2, 3),
                position=("superficial", "periventricular", "deep")[where],
                t2_bright=rng.random() < P["malig_t2_bright"],
                haemorrhage=rng.random() < P["haemorrhage"], calcified=False,
                lob=rng.uniform(0.12, 0.28), necrosis=rng.random() < P["glioma_necrosis"],
                rho_n=rng.uniform(0.55, 0.8), push=rng.uniform(0.35, 0.7), hetero=True,
                oedema="extensive" if rng.random() < P["malig_oedema"] else "minimal",
            ))
        else:
            k = 1 + int(rng.choice(3, p=P["met_count"]))
            Rmax = lo_r + 0.5 * (hi_r - lo_r)
            ring = rng.random() < P["met_necrosis"]
            oed = "extensive" if rng.random() < P["malig_oedema"] else "minimal"
            bright = rng.random() < P["malig_t2_bright"]
            bleed = rng.random() < P["haemorrhage"]
            placed: list[np.ndarray] = []
            for j in range(k):
                R = rng.uniform(0.75 * lo_r, Rmax) * (1.0 if j == 0 else rng.uniform(0.6, 1.0))
                if ring and j == 0:  # necrotic metastases are the larger ones
                    R = max(R, rng.uniform(lo_r + 0.15 * (hi_r - lo_r), Rmax))
                c = _draw(rng, anat.junction, anat, (0.3 * R, R + 6), placed, 3.5 * Rmax / s)
                placed.append(c)
                lesions.append(dict(
                    site="junction", kind="intra", centre_t=c, R=R, axes=rng.uniform(0.85, 1.15, 3),
                    lob=rng.uniform(0.04, 0.12), necrosis=ring and R > 0.8 * lo_r,
                    rho_n=rng.uniform(0.5, 0.8), oedema=oed, push=rng.uniform(0.7, 0.9),
                    hetero=False, t2_bright=bright, haemorrhage=bleed and j == 0, calcified=False,
                ))
    for les in lesions:
        les["R_vox"] = max(les["R"] / s, 1.1)
        anchor = np.clip(to_output(les["centre_t"]), 1, S - 2)
        if les["kind"] == "extra":
            # the mass grows from its dural attachment (the anchor) and pushes the brain away
            # from it; volume-equivalent hemisphere of the dome part below the dural plane
            h = les["base"]
            kept = (2 + 3 * h - h ** 3) / 4
            les["push_r"] = les["push"] * np.cbrt(2 * les["a"] * les["b"] * les["c"] * kept) / s
            les["anchor"] = anchor
            les["centre"] = np.clip(anchor - les["normal"] * (h * les["a"] / s), 1, S - 2)
        else:
            les["push_r"] = les["push"] * les["R_vox"]
            les["anchor"] = les["centre"] = anchor

    # ---- sampling coordinates: mass effect (radial push, volume-conserving) then the warp
    grid = anat.grid
    pts = grid
    shift_vec = np.zeros(3, np.float32)
    for les in lesions:
        c = les["anchor"].reshape(3, 1, 1, 1)
        rp = les["push_r"]
        d = pts - c
        r = np.sqrt((d * d).sum(0)) + 1e-6
        r_new = np.cbrt(np.maximum(r ** 3 - rp ** 3, 0.0))
        gate = np.clip(1.0 - (anat.out_mm - 1.0) / 3.0, 0.0, 1.0)  # the skull does not move
        pts = pts - d * ((1.0 - r_new / r) * gate)[None]
        # midline shift: displacement of the midline point level with a lateral lesion
        mid = anat.mni_to_vox([0.0, *anat.vox_to_mni(les["anchor"])[1:]])
        rr = float(np.linalg.norm(mid - les["anchor"]))
        if rr > 1.2 * les["R_vox"]:
            shift_vec += (rr - np.cbrt(max(rr ** 3 - rp ** 3, 0.0))) * s * (
                mid - les["anchor"]) / rr
    coords = (cg + (pts - cg) * scale.reshape(3, 1, 1, 1).astype(np.float32) + disp).astype(
        np.float32)

    # ---- clean images: per-subject tissue signals, combined in template space, then warped
    # protocol variability: per-tissue contrast jitter and a global gain, per sequence
    sig = _SIGNAL * np.exp(P["contrast_jitter"] * rng.standard_normal(_SIGNAL.shape))
    sig = (sig * np.exp(P["gain"] * rng.standard_normal((len(SEQUENCES), 1)))).astype(np.float32)
    sig[3, _CSF] = rng.uniform(*P["flair_csf"])  # incomplete / variable CSF nulling on FLAIR
    fatsat = rng.random(len(SEQUENCES)) < P["fat_sat"]  # fat suppression darkens marrow, scalp
    sig[np.ix_(fatsat, [_MARROW, _SCALP])] *= rng.uniform(0.15, 0.4, (int(fatsat.sum()), 1))
    flat = anat.tissue.reshape(len(TISSUES), -1)
    imgs_t = (sig @ flat).reshape(len(SEQUENCES), S, S, S)
    imgs = np.stack([
        ndimage.map_coordinates(imgs_t[k], coords, order=1, mode="constant", cval=0.0,
                                prefilter=False)
        for k in range(len(SEQUENCES))
    ])
    tex = _coarse_field(rng, S, 12)      # tumour heterogeneity
    fingers = _coarse_field(rng, S, 14)  # oedema spreading pattern
    gm_v, wm_v, csf_v = sig[:, _GM], sig[:, _WM], sig[:, _CSF]

    # ---- lesions, painted in the output grid
    mask = np.zeros((S, S, S), bool)
    for les in lesions:
        _paint(rng, les, imgs, coords, tex, fingers, mask, gm_v, wm_v, csf_v, s, anat)

    volumes = {m: np.clip(imgs[k], 0, None).astype(np.float32) for k, m in enumerate(SEQUENCES)}
    volumes = apply_artefacts(rng, volumes, cfg, s, reference="T1WI")

    # ---- facts for reports / meta
    for les in lesions:
        ctr = les["centroid"]
        q = to_template(ctr)
        qi = tuple(np.clip(np.rint(q).astype(int), 0, S - 1))
        les["depth_mm"] = float(anat.depth_mm[qi] - anat.out_mm[qi])
        les["centre_mni"] = [float(v) for v in anat.vox_to_mni(q)]
    midline_shift = float(abs(shift_vec[0]))
    reports = _reports(rng, label, subtype, lesions, midline_shift)
    meta = {
        "subtype": subtype,
        "n_lesions": len(lesions),
        "lesions": [_public(les) for les in lesions],
        "midline_shift_mm": round(midline_shift, 1),
        "deformation_mm": round(deform_mm, 2),
        "scale": [round(float(v), 4) for v in scale],
        "anatomy": "MNI152 (ICBM 2009a sym) via nilearn, warped",
    }
    return SimCase(label, volumes, mask.astype(np.uint8), reports, spacing=(s, s, s), meta=meta)


def _public(les: dict) -> dict:
    keys = ("site", "kind", "position", "necrosis", "oedema", "hetero", "t2_bright",
            "calcified", "haemorrhage", "depth_mm", "wm_at_centre", "centre_mni", "size_mm",
            "oedema_mm", "enhancement", "enh_rel", "t1_rel", "tail", "cleft")
    out = {k: les[k] for k in keys if k in les}
    out["centre_vox"] = [float(v) for v in les["centroid"]]
    out["radius_mm"] = round(float(les["R"]), 1)
    for k, v in out.items():
        if isinstance(v, (np.bool_,)):
            out[k] = bool(v)
    return out


def _paint(rng, les, imgs, coords, tex, fingers, mask, gm_v, wm_v, csf_v, s, anat) -> None:
    """Draw one lesion (tumour, necrosis, oedema, tail, cleft) into ``imgs`` in place."""
    S = imgs.shape[1]
    Rv = les["R_vox"]
    c = les["centre"]
    oed = les["oedema"]
    # vasogenic oedema: reach beyond the tumour edge (mm -> units of R) and strength
    if les["kind"] == "extra":
        reach_mm, amp = {"none": (0.0, 0.0),
                         "mild": (rng.uniform(4, 10), rng.uniform(0.3, 0.5)),
                         "moderate": (rng.uniform(10, 22), rng.uniform(0.5, 0.8))}[oed]
    elif oed == "extensive":
        reach_mm = rng.uniform(15, 40) if les["site"] == "wm" else rng.uniform(15, 35)
        amp = rng.uniform(0.85, 1.0)
    else:
        reach_mm, amp = rng.uniform(2, 5), rng.uniform(0.1, 0.35)
    reach = reach_mm / les["R"]
    ext = Rv * (1.35 + reach) + 3
    lo = np.maximum(np.floor(c - ext).astype(int), 0)
    hi = np.minimum(np.ceil(c + ext).astype(int) + 1, S)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(hi - lo)
    cl = (c - lo).astype(np.float32)
    d = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) - cl[i] for i, n in
                               enumerate(shape)], indexing="ij"))
    r = np.sqrt((d * d).sum(0)) + 1e-6
    u = d / r
    if les["kind"] == "extra":
        fr = _frame(les["normal"])
        loc = np.tensordot(fr, d, axes=(1, 0))  # (normal, t1, t2) components
        Rn, Rb, Rc = les["a"] / s, les["b"] / s, les["c"] / s
        Rn, Rb, Rc = max(Rn, 1.1), max(Rb, 1.1), max(Rc, 1.1)
        e = np.sqrt((loc[0] / Rn) ** 2 + (loc[1] / Rb) ** 2 + (loc[2] / Rc) ** 2)
        e = e / (1 + _lobulation(rng, les["lob"])(u))
        base = les["base"] * Rn
        inside_half = np.clip(base - loc[0] + 0.5, 0, 1)  # flat dural base
        T = np.clip((1 - e) * Rv + 0.5, 0, 1) * inside_half
        ttl = float(np.mean([Rn, Rb, Rc]))
    else:
        radii = les["axes"] * Rv
        e = ellipsoid(shape, cl, radii)
        e = e / (1 + _lobulation(rng, les["lob"], order=4)(u))
        edge = 0.8 if les["site"] == "wm" else 1.0
        T = np.clip((1 - e) * Rv * edge + 0.5, 0, 1)
        ttl = Rv
    if not (T >= 0.5).any():  # keep tiny lesions visible on coarse grids
        T[tuple(np.clip(np.rint(cl).astype(int), 0, np.array(shape) - 1))] = 1.0
    # necrotic / cystic core with an irregular inner margin
    if les["necrosis"]:
        en = e / (1 + _lobulation(rng, 0.25 if les["kind"] == "intra" else 0.15, order=4)(u))
        N = np.clip((les["rho_n"] - en) * ttl + 0.5, 0, 1) * T
    else:
        N = np.zeros_like(T)
    E = T - N
    tx = tex[sl]
    fg = fingers[sl]
    csl = coords[(slice(None),) + sl]
    wml, gml = (ndimage.map_coordinates(anat.tissue[t], csl, order=1, mode="constant", cval=0.0,
                                        prefilter=False) for t in (_WM, _GM))
    # tumour signals (relative to the subject's tissue signals)
    g = gm_v
    bright = les["t2_bright"]
    if les["kind"] == "extra":
        t1 = g[0] * rng.uniform(*P["tumour_t1"])
        t2 = g[2] * (rng.uniform(1.3, 1.6) if bright else rng.uniform(0.9, 1.1))
        fl = g[3] * rng.uniform(0.95, 1.2)
        t1c = t1 * rng.uniform(*P["men_enhancement"])
        het = rng.uniform(0.15, 0.3) if les["hetero"] else 0.04
        enh_map = t1c * (1 - het * np.clip(0.6 - tx, 0, 2))
        n_sig = (0.0, 0.0, 0.0)  # meningiomas carry no necrosis here (see calcification)
        les["enhancement"] = "heterogeneous" if les["hetero"] else "homogeneous"
    else:
        t1 = g[0] * rng.uniform(*P["tumour_t1"])
        t2 = g[2] * (rng.uniform(1.3, 1.6) if bright else rng.uniform(0.9, 1.1))
        fl = g[3] * rng.uniform(0.95, 1.25)
        t1c = t1 * rng.uniform(*P["malig_enhancement"])
        het = rng.uniform(0.12, 0.3) if les["hetero"] else rng.uniform(0.03, 0.1)
        enh_map = t1c * (1 - het * np.clip(0.5 - tx, 0, 2))
        # necrosis: dark T1 / bright T2, to a degree that varies (protein, debris, blood)
        n_sig = (t1 * rng.uniform(0.55, 0.9), t2 * rng.uniform(0.9, 1.4),
                 g[3] * rng.uniform(0.8, 1.25))
        les["enhancement"] = "ring" if les["necrosis"] else "solid"
    t_sig = [t1, enh_map, t2, fl]
    les["t1_rel"] = float(t1 / g[0])          # tumour T1 relative to grey matter
    les["enh_rel"] = float(t1c / wm_v[1])     # enhancing tumour on T1C relative to white matter
    n_sig = (n_sig[0], n_sig[0] * rng.uniform(1.0, 1.08), n_sig[1], n_sig[2])
    # focal components inside the solid tumour: calcification (dark everywhere, no enhancement)
    # or haemorrhage (T1-bright methaemoglobin, T2-dark)
    if les.get("calcified") or les.get("haemorrhage"):
        foci = np.clip((tx - rng.uniform(0.6, 1.1)) * 2.5, 0, 1)
        if les.get("calcified"):
            f_sig = (t1 * rng.uniform(0.3, 0.55), t1 * rng.uniform(0.3, 0.6),
                     g[2] * rng.uniform(0.2, 0.45), g[3] * rng.uniform(0.25, 0.5))
        else:
            f_sig = (wm_v[0] * rng.uniform(1.05, 1.3), wm_v[1] * rng.uniform(1.1, 1.35),
                     g[2] * rng.uniform(0.3, 0.6), g[3] * rng.uniform(0.8, 1.1))
        t_sig = [ts * (1 - foci) + fs * foci for ts, fs in zip(t_sig, f_sig)]
    # oedema: plateau then decay, finger-like along the white matter, cortex relatively spared
    if amp > 0:
        eo = (e - 1) / reach * (1 + 0.35 * np.clip(fg, -2, 2))
        O = amp * np.clip(1.6 * (1 - eo), 0, 1) * (e > 0.85) * (1 - T)
        oed_sig = (wm_v[0] * 0.62, wm_v[1] * 0.62, wm_v[2] * 1.35, gm_v[3] * 1.35)
        for k in range(4):
            imgs[k][sl] += O * (wml * (oed_sig[k] - wm_v[k]) + 0.6 * gml * (oed_sig[k] - gm_v[k]))
    les["oedema_mm"] = float(reach_mm)
    # CSF cleft between an extra-axial mass and the displaced brain
    if les.get("cleft"):
        C = np.clip(1 - np.abs(e - 1 - 0.7 / Rv) * Rv / 0.9, 0, 1) * (1 - T) * 0.6
        C *= np.clip(les["base"] * les["a"] / s - loc[0] + 0.5, 0, 1)
        for k in range(4):
            imgs[k][sl] = imgs[k][sl] * (1 - C) + C * csf_v[k]
    for k in range(4):
        # sequence-specific internal texture (each contrast shows its own heterogeneity)
        h = rng.uniform(0.0, P["texture"])
        ts = t_sig[k] * (1 + h * np.clip(smooth_noise(rng, shape, 1.0), -2.5, 2.5))
        imgs[k][sl] = imgs[k][sl] * (1 - T) + E * ts + N * n_sig[k]
    # dural tail: enhancing thickened dura along the base plane, beyond the tumour edge
    if les.get("tail"):
        rho = np.sqrt(loc[1] ** 2 + loc[2] ** 2) / max(Rb, Rc)
        h = np.exp(-((loc[0] - base - 0.3) ** 2) / (2 * 0.6 ** 2))
        tail = h * np.clip(1 - (rho - 1) / rng.uniform(0.5, 0.9), 0, 1) * (rho > 0.9) * (1 - T)
        imgs[1][sl] = imgs[1][sl] * (1 - 0.7 * tail) + 0.7 * tail * gm_v[1] * 1.5
    m = T >= 0.5
    mask[sl] |= m
    idx = np.argwhere(m)
    ci = tuple(np.clip(np.rint(idx.mean(0)).astype(int), 0, np.array(shape) - 1))
    les["wm_at_centre"] = float(wml[ci])  # warped white matter (before the lesion) at its centre
    les["centroid"] = (idx.mean(0) + lo).astype(np.float32)
    les["size_mm"] = [float((idx[:, a].max() - idx[:, a].min() + 1) * s) for a in range(3)]


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _t1_word(rng, rel: float) -> str:
    if rel < 0.85:
        return pick(rng, ["hypointense", "mildly hypointense"])
    if rel < 1.05:
        return pick(rng, ["isointense", "near isointense", "iso- to slightly hypointense"])
    return pick(rng, ["slightly hyperintense", "mildly hyperintense"])


def _enh_word(rng, rel_wm: float) -> str:
    if rel_wm < 0.95:
        return pick(rng, ["faint", "mild"])
    if rel_wm < 1.25:
        return pick(rng, ["moderate", "definite"])
    return pick(rng, ["avid", "intense", "vivid"])


def _mass_effect(rng, les: dict, shift: float) -> str:
    if shift >= 3:
        return pick(rng, [f"Mass effect with {shift:.0f} mm midline shift.",
                          f"Midline shift measures {shift:.0f} mm.",
                          f"Resultant mass effect, {shift:.0f} mm of midline shift."])
    if les["R"] >= 12:
        return pick(rng, ["Local mass effect with effacement of the adjacent sulci.",
                          "Effacement of adjacent sulci; no midline shift.",
                          "Mild local mass effect without midline shift."])
    return pick(rng, ["No significant mass effect.", "No midline shift.",
                      "Minimal mass effect."])


def _oedema_phrase(rng, les: dict, seq: str) -> str:
    grade, mm = les["oedema"], les.get("oedema_mm", 0.0)
    where = pick(rng, ["surrounding", "perilesional", "adjacent"])
    if grade == "none":
        return pick(rng, ["No perilesional oedema.", "No surrounding signal abnormality.",
                          "No oedema in the adjacent parenchyma."])
    if grade in ("mild", "minimal"):
        return pick(rng, [f"Mild {where} {seq} hyperintensity, in keeping with oedema.",
                          f"Thin rim of {where} oedema.",
                          f"Minimal {where} vasogenic oedema."])
    if grade == "moderate":
        return pick(rng, [f"Moderate {where} vasogenic oedema (about {mm:.0f} mm).",
                          f"{where.capitalize()} oedema extending about {mm:.0f} mm into the "
                          "adjacent white matter."])
    return pick(rng, [
        f"Extensive {where} vasogenic oedema extending about {mm:.0f} mm along the white matter.",
        f"Marked {where} {seq} hyperintensity tracking through the white matter (about "
        f"{mm:.0f} mm), consistent with vasogenic oedema.",
        f"Large territory of finger-like vasogenic oedema, about {mm:.0f} mm beyond the mass.",
    ])


def _reports(rng, label: str, subtype: str, lesions: list[dict], shift: float) -> dict[str, str]:
    """Per-sequence reports plus a global impression, worded from the generated parameters."""
    main = _largest(lesions)
    loc = _where(main)
    size = _dims(main)
    n = len(lesions)
    me = _mass_effect(rng, main, shift)
    if label == "benign":
        rep = _benign_reports(rng, main, loc, size, me)
    else:
        rep = _malignant_reports(rng, subtype, lesions, main, loc, size, me)
    return {k: " ".join(v.split()) for k, v in rep.items()}  # tidy double spaces


def _benign_reports(rng, main: dict, loc: str, size: str, me: str) -> dict[str, str]:
    mass = pick(rng, ["extra-axial mass", "dural-based mass", "extra-axial lesion",
                      "broad-based extra-axial mass"])
    shape = pick(rng, ["well circumscribed", "well defined", "sharply marginated"])
    cleft = pick(rng, ["A CSF cleft separates it from the brain.", "CSF cleft sign is present.",
                       "Interface CSF cleft between the mass and the cortex."]) \
        if main.get("cleft") else ""
    calc = pick(rng, ["Internal foci of low signal, likely calcification.",
                      "Punctate internal signal voids (calcification)."]) \
        if main.get("calcified") else ""
    t1 = _t1_word(rng, main["t1_rel"])
    rep = {"T1WI": f"{shape.capitalize()} {mass} at the {loc}, measuring {size}, {t1} to grey "
                   f"matter on T1. {calc} {me}"}
    adj = _enh_word(rng, main["enh_rel"])
    if main["hetero"]:
        enh = pick(rng, [f"{adj.capitalize()} but heterogeneous enhancement with non-enhancing "
                         "internal foci",
                         f"{adj.capitalize()}, patchy enhancement with non-enhancing areas",
                         f"Heterogeneous, predominantly {adj} enhancement"])
    else:
        enh = pick(rng, [f"{adj.capitalize()} homogeneous enhancement",
                         f"{adj.capitalize()}, uniform enhancement",
                         f"Homogeneous, {adj} contrast enhancement"])
    tail = pick(rng, [" with an enhancing dural tail", ", with a dural tail",
                      " with adjacent dural thickening (dural tail)"]) if main.get("tail") else ""
    base = pick(rng, ["Broad dural base.", "Broad-based dural attachment.", "Dural-based."])
    rep["T1C"] = f"{enh} of the {size} {mass} at the {loc}{tail}. {base}"
    t2 = (pick(rng, ["hyperintense", "markedly hyperintense", "bright"]) if main.get("t2_bright")
          else pick(rng, ["iso- to slightly hyperintense", "isointense", "near isointense"]))
    rep["T2WI"] = (f"{mass.capitalize()} at the {loc} ({size}), {t2} to cortex on T2. {cleft} "
                   f"{calc} {_oedema_phrase(rng, main, 'T2')}")
    fl = pick(rng, ["isointense to slightly hyperintense", "mildly hyperintense", "isointense"])
    rep["T2FLAIR"] = pick(rng, [f"On FLAIR, the {size} {mass} at the {loc} is {fl}.",
                                f"FLAIR: {size} {mass} at the {loc}, {fl}."]) \
        + " " + _oedema_phrase(rng, main, "FLAIR")
    if rng.random() < 0.5:
        rep["global"] = pick(rng, [
            f"{size} extra-axial dural-based mass at the {loc}, most consistent with meningioma.",
            f"Meningioma at the {loc} ({size}).",
            f"Findings in keeping with a meningioma at the {loc}, measuring {size}."])
    else:
        rep["global"] = pick(rng, [
            f"Enhancing extra-axial mass at the {loc} ({size}). {me}",
            f"{size} dural-based enhancing lesion at the {loc}; no intra-axial abnormality.",
            f"Solitary extra-axial lesion at the {loc}, {size}, displacing the adjacent brain."])
    return rep


def _malignant_reports(rng, subtype: str, lesions: list[dict], main: dict, loc: str, size: str,
                       me: str) -> dict[str, str]:
    n = len(lesions)
    others = ""
    if n > 1:
        rest = [les for les in lesions if les is not main]
        others = pick(rng, ["Additional", "Further", "Also a"]) + " " + "; ".join(
            f"{_dims(les)} lesion in the {_where(les)}" for les in rest) + "."
    word = pick(rng, ["intra-axial mass", "intra-axial lesion", "parenchymal mass"])
    if main["necrosis"]:
        t1 = pick(rng, ["hypointense with a more hypointense necrotic centre",
                        "heterogeneously hypointense, centrally lower signal",
                        "low signal with a darker central component"])
        t2 = pick(rng, ["heterogeneously hyperintense with a fluid-bright necrotic centre",
                        "hyperintense with central fluid-like signal",
                        "mixed, predominantly high signal with central necrosis"])
        adj = _enh_word(rng, main["enh_rel"])
        enh = pick(rng, [f"Thick, irregular, {adj} peripheral (ring) enhancement around a "
                         "non-enhancing necrotic core",
                         f"{adj.capitalize()} irregular rim enhancement surrounding central "
                         "necrosis",
                         f"Nodular, irregular, {adj} ring enhancement with central "
                         "non-enhancement"])
    else:
        t1 = _t1_word(rng, main["t1_rel"]) + " to grey matter"
        t2 = (pick(rng, ["markedly hyperintense", "homogeneously hyperintense"])
              if main.get("t2_bright") else
              pick(rng, ["mildly hyperintense", "near isointense to cortex",
                         "slightly hyperintense"]))
        adj = _enh_word(rng, main["enh_rel"])
        enh = pick(rng, [f"Solid, fairly homogeneous {adj} enhancement",
                         f"{adj.capitalize()} nodular solid enhancement",
                         f"{adj.capitalize()} solid enhancement without necrosis"])
    blood = pick(rng, ["Foci of intrinsic T1 hyperintensity, in keeping with blood products.",
                       "Internal T1-bright foci suggest haemorrhage."]) \
        if main.get("haemorrhage") else ""
    many = (f"{n} " + pick(rng, ["lesions", "parenchymal lesions", "masses"]) + "; the largest "
            if n > 1 else "")
    rep = {
        "T1WI": f"{many}{word} in the {loc}, measuring {size}, {t1} on T1. {blood} {me} {others}",
        "T1C": f"{enh} of the {size} {word} in the {loc}. {others}",
        "T2WI": f"{word.capitalize()} in the {loc} ({size}), {t2}. "
                f"{_oedema_phrase(rng, main, 'T2')}",
        "T2FLAIR": f"FLAIR: {size} {word} in the {loc}. {_oedema_phrase(rng, main, 'FLAIR')} "
                   f"{others}",
    }
    rep["T1WI"] = rep["T1WI"][0].upper() + rep["T1WI"][1:]
    if rng.random() < 0.5:
        if subtype == "glioma":
            dx = pick(rng, ["most consistent with high-grade glioma (glioblastoma).",
                            "in keeping with a high-grade glioma.",
                            "suspicious for high-grade glioma."])
        elif n > 1:
            dx = pick(rng, ["most consistent with metastases.",
                            "in keeping with metastatic disease.",
                            "suggestive of multiple brain metastases."])
        else:
            dx = pick(rng, ["favouring a solitary metastasis; high-grade glioma less likely.",
                            "consistent with a metastasis."])
        rep["global"] = (f"{'Multiple' if n > 1 else 'Solitary'} enhancing intra-axial "
                         f"{'lesions' if n > 1 else 'lesion'}, the largest {size} in the {loc}, "
                         f"{dx}")
    else:
        total = f" {n} lesions in total." if n > 1 else ""
        rep["global"] = pick(rng, [
            f"{enh} in a {size} {word} of the {loc}. {_oedema_phrase(rng, main, 'FLAIR')}{total}",
            f"{'Multiple enhancing lesions' if n > 1 else 'Enhancing intra-axial mass'}, largest "
            f"{size} in the {loc}, with {main['oedema']} surrounding oedema. {me}",
        ])
    return rep


DATASHEET = """
## Brain

**Anatomy.** Real head anatomy from the MNI152 (ICBM 2009a, symmetric) T1 template, brain mask
(template > 0.2, as `nilearn.datasets.load_mni152_brain_mask`) and grey / white-matter
probability maps shipped inside nilearn, read offline from the package files. They are
resampled once per process to a `size`^3 cube of side 216 mm centred on MNI (0, -17, 8) (RAS
voxel order: axis 0 = x left->right, 1 = y posterior->anterior, 2 = z inferior->superior;
spacing = 216 mm / size, e.g. 3.4 mm at 64, 4.5 mm at 48). CSF = brain mask - GM - WM; outside
the mask a layered shell is grown by distance (extra-axial CSF, dura, inner table, diploe, outer
table, scalp; about 15 mm, smoothly varying skull thickness), plus the falx, superior sagittal
and transverse sinuses, sulcal cortical vessels and choroid plexus. Each subject is warped by a
random smooth displacement field (1.5-3 mm std) and a global / per-axis scaling (about +-7 %),
and every lesion pushes the surrounding brain away (volume-conserving radial displacement that
spares the skull), so no two subjects share anatomy. The template volume ends at MNI z = -72
(lower brainstem), so the head is closed below it.

**Sequences.** `T1WI`, `T1C`, `T2WI`, `T2FLAIR` (DWI / ADC are not simulated) are
partial-volume mixtures of per-tissue signals (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR:
CSF nulled, GM > WM; T1C: T1 plus enhancing dura, sinuses, vessels and choroid plexus).
Protocol variability per case and sequence: tissue-signal jitter (~8 %), global gain (~10 %),
fat suppression (35 % of sequences: dark marrow and scalp), imperfect FLAIR CSF nulling. Then
the shared artefacts (`apply_artefacts`, reference `T1WI`): blur, bias field, Rician noise and
misregistration of T1C / T2WI / T2FLAIR. The lesion mask (enhancing tumour + necrosis, not
oedema, not the dural tail) lies in the unshifted `T1WI` grid.

**benign (meningioma-like).** Extra-axial dome with a flat base on the dura at the convexity
(50 %), along the falx (25 %) or at the skull base (olfactory groove / planum, sphenoid wing,
middle fossa; 25 %), from flat en-plaque to globular (indenting the brain through a narrow
attachment); radius 8-22 mm; pushes the brain away from the dural attachment. T1 hypo- to
slightly hyperintense to grey matter (0.65-1.2 x GM, same range as malignant tumour); T1C avid
enhancement (T1C / T1 ratio 2.3-2.8), homogeneous in 70 %, patchy with calcified (dark on all
sequences) foci in 30 %; dural tail 60 %; CSF cleft 35 %; T2 iso in 80 %, bright in 20 %;
oedema none 55 %, mild 35 %, moderate 10 %.

**malignant.** High-grade glioma (50 %): one larger (radius 12-22 mm), lobulated white-matter
mass, superficial reaching the cortex (40 %), periventricular (25 %) or deep (35 %); ring
enhancement around necrosis in 55 % (else solid, patchy). Metastases (50 %): 1 (60 %), 2 (25 %)
or 3 (15 %) rounder lesions at the grey-white junction of cerebrum or cerebellum, radius 6-15 mm;
ring enhancement (larger ones) in 50 %, else solid. Enhancement is less intense than a
meningioma's (T1C / T1 1.6-2.1); necrosis is darker on T1, non-enhancing on T1C and usually
brighter on T2; solid tumour T2-bright in 60 %; T1-bright haemorrhagic foci in 30 %.
Vasogenic oedema, bright on FLAIR (and T2), dark on T1, spreads finger-like through the white
matter (cortex relatively spared): extensive (15-40 mm) in 60 %, minimal otherwise.

**Overlap (by design).** Each cue is class-typical but neither necessary nor exclusive, and the
cues are drawn independently: patchy meningiomas vs solid malignant lesions on T1C; meningioma
oedema vs oedema-poor malignant lesions on FLAIR; T2-bright meningiomas vs T2-iso tumours on
T2; superficial gliomas / cortical metastases and globular or falcine meningiomas blur the
intra- vs extra-axial location; tumour T1 has the same range in both classes, so the
enhancement ratio needs T1C together with T1WI. Every single sequence is therefore ambiguous
and combining them helps: on `benchmarks/sim_separability.py --organ brain --cases 200
--size 48 --seed 0` (logistic regression on lesion statistics) single sequences score 80-82 %
and all four together 91 % (seeds 1-4: singles 76-88 %, all 91-97 %, gap 9.5-16.5 points).
The knobs are in `medmap.data.sim.brain.P`.

**Reports.** One per sequence, describing what that sequence shows (location by hemisphere and
lobe from the lesion's MNI coordinates, size in mm from the mask extents as AP x LR x CC,
signal, enhancement, oedema, mass effect) in varied radiologist wording; the global impression
names the diagnosis (meningioma, high-grade glioma, metastases) in about half of the cases,
otherwise it stays descriptive.
"""
