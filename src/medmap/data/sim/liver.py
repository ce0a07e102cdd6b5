"""Liver generator of MedMoM-Sim: an 8-phase abdominal MRI study with focal liver lesions.

:func:`simulate_case` draws one study: an abdomen (body wall, subcutaneous fat, spine, aorta,
IVC, kidneys, spleen, gallbladder, a randomly shaped liver with portal and hepatic veins) and
one or more lesions of the requested class, rendered on the eight LLD-MMRI sequences
(``T2WI, DWI, InPhase, OutPhase, C-pre, C+A, C+V, C+Delay``), then MR artefacts
(:func:`~medmap.data.sim.common.apply_artefacts`) and one report per sequence plus a global
impression, all derived from the same random parameters.

Lesion appearance follows textbook signatures, but every class is drawn from per-case
*distributions* (size, conspicuity, enhancement strength, rim thickness, jitter) chosen so
that within any single sequence two or three classes look alike; only the combination of
sequences separates them (see :data:`DATASHEET` and ``benchmarks/sim_separability.py``).

Array axes are RAS voxel order: axis 0 runs to the patient's right, axis 1 anterior,
axis 2 superior (the driver writes ``affine = diag(spacing)``).

Example:
    >>> import numpy as np
    >>> from medmap.data.sim.common import SimConfig
    >>> case = simulate_case(np.random.default_rng(0), "hepatic_cyst", SimConfig(size=32))
    >>> sorted(case.volumes) == sorted(PHASES) and bool(case.mask.any())
    True
"""

from __future__ import annotations

import numpy as np

from medmap.data.sim.common import SimCase, SimConfig, apply_artefacts, ellipsoid, pick, smooth_noise
from medmap.data.vocab import LIVER

__all__ = ["simulate_case", "DATASHEET", "PHASES", "CLASS_SPECS"]

PHASES: tuple[str, ...] = LIVER.modalities
T2, DWI, INP, OUTP, PRE, ART, VEN, DEL = PHASES
NONCONTRAST = (T2, DWI, INP, PRE)          # lesion given as a ratio to liver (OutPhase derived)
CONTRAST = (ART, VEN, DEL)                  # lesion given as enhancement added to its C-pre signal

# ---------------------------------------------------------------------------------------------
# Tissues and their signal per phase (before per-case variability)
# ---------------------------------------------------------------------------------------------
AIR, FAT, MUSCLE, VISCERA, BONE, FLUID, LIV, SPLEEN, KIDNEY, AORTA, IVC, PORTAL, HEPATIC = range(13)
_TISSUES = ("air", "fat", "muscle", "viscera", "bone", "fluid", "liver", "spleen", "kidney",
            "aorta", "ivc", "portal_vein", "hepatic_vein")
#                      T2    DWI   InP   OutP  C-pre C+A   C+V   C+Del
_SIGNAL = np.array([
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],   # air
    [1.10, 0.08, 1.30, 1.25, 0.12, 0.13, 0.14, 0.14],   # fat (fat-suppressed on DWI / C-*)
    [0.32, 0.30, 0.60, 0.58, 0.50, 0.58, 0.70, 0.72],   # muscle
    [0.60, 0.35, 0.60, 0.55, 0.45, 0.60, 0.80, 0.75],   # viscera (bowel, pancreas, ...)
    [0.55, 0.30, 0.90, 0.70, 0.45, 0.55, 0.60, 0.60],   # bone marrow
    [1.80, 0.20, 0.22, 0.22, 0.15, 0.15, 0.15, 0.15],   # fluid (bile, CSF, dilated duct)
    [0.45, 0.50, 0.90, 0.88, 0.80, 0.95, 1.25, 1.15],   # liver
    [0.80, 0.95, 0.70, 0.68, 0.60, 1.30, 1.30, 1.10],   # spleen
    [0.85, 0.90, 0.65, 0.63, 0.55, 1.60, 1.50, 1.30],   # kidney
    [0.12, 0.06, 0.50, 0.50, 0.35, 1.90, 1.35, 1.10],   # aorta (flow void on T2)
    [0.20, 0.08, 0.50, 0.50, 0.35, 0.50, 1.40, 1.10],   # IVC
    [0.18, 0.08, 0.50, 0.50, 0.35, 0.90, 1.60, 1.20],   # portal vein
    [0.18, 0.08, 0.50, 0.50, 0.35, 0.35, 1.50, 1.20],   # hepatic veins
], np.float32)
# multiplicative texture amplitude per tissue (parenchymal inhomogeneity, bowel content)
_TEXTURE = np.array([0, .04, .04, .15, .06, .01, .03, .05, .06, .02, .02, .02, .02], np.float32)

# ---------------------------------------------------------------------------------------------
# Lesion classes. Non-contrast phases: ratio of lesion signal to liver signal, (lo, hi) drawn
# uniformly per case. Contrast phases: enhancement (absolute signal added to the lesion's own
# C-pre signal; the liver itself gains ~0.15 / 0.45 / 0.35 on C+A / C+V / C+Delay).
# Compartments: core, rim (inner shell, thickness rim_t x radius), scar (centre), cap (thin
# outer capsule), fill (hemangioma's centripetal front: nodules "nod" vs unfilled "core"),
# halo (perilesional liver, multiplicative). Missing compartments default to core.
# ---------------------------------------------------------------------------------------------
CLASS_SPECS: dict[str, dict] = {
    "hepatic_cyst": dict(
        count=((1, 2, 3), (0.55, 0.25, 0.20)), size=(0.0, 0.9), edge=0.0, lob=0.03,
        het=0.02, fat=(0.0, 0.0, 0.0), complicated=0.25,
        ratio={T2: dict(core=(2.7, 4.2)), DWI: dict(core=(0.45, 1.2)),
               INP: dict(core=(0.30, 0.55)), PRE: dict(core=(0.22, 0.45))},
        enh={ART: dict(core=(0.0, 0.0)), VEN: dict(core=(0.0, 0.0)), DEL: dict(core=(0.0, 0.0))},
    ),
    "hepatic_hemangioma": dict(
        count=((1, 2), (0.7, 0.3)), size=(0.1, 1.0), edge=0.05, lob=0.10, het=0.04,
        fat=(0.0, 0.0, 0.0), flash=0.15, slow=0.2,
        ratio={T2: dict(core=(2.2, 3.6)), DWI: dict(core=(0.8, 1.7)),
               INP: dict(core=(0.38, 0.65)), PRE: dict(core=(0.30, 0.55))},
        enh={ART: dict(core=(0.0, 0.06), nod=(1.0, 1.6), fill=(0.15, 0.4)),
             VEN: dict(core=(0.0, 0.08), nod=(1.0, 1.4), fill=(0.45, 0.8)),
             DEL: dict(core=(0.05, 0.15), nod=(0.8, 1.2), fill=(0.75, 1.0))},
    ),
    "focal_nodular_hyperplasia": dict(
        count=((1, 2), (0.8, 0.2)), size=(0.15, 1.0), edge=0.08, lob=0.05, het=0.04,
        fat=(0.0, 0.0, 0.0), scar=(0.7, 0.15, 0.35),
        ratio={T2: dict(core=(0.95, 1.45), scar=(1.8, 3.0)), DWI: dict(core=(0.9, 1.5)),
               INP: dict(core=(0.85, 1.05)), PRE: dict(core=(0.85, 1.05), scar=(0.55, 0.7))},
        enh={ART: dict(core=(0.5, 1.15), scar=(0.0, 0.1)),
             VEN: dict(core=(0.40, 0.62), scar=(0.2, 0.4)),
             DEL: dict(core=(0.28, 0.45), scar=(0.55, 0.9))},
    ),
    "hepatocellular_carcinoma": dict(
        count=((1, 2, 3), (0.7, 0.2, 0.1)), size=(0.2, 1.0), edge=0.08, lob=0.06, het=0.12,
        fat=(0.6, 0.18, 0.45), cirrhosis=0.6, capsule=(0.7, 0.10, 0.18),
        ratio={T2: dict(core=(1.15, 1.9)), DWI: dict(core=(1.2, 2.1)),
               INP: dict(core=(0.7, 1.1)), PRE: dict(core=(0.65, 1.05))},
        enh={ART: dict(core=(0.5, 1.2)),
             VEN: dict(core=(0.12, 0.38), cap=(0.35, 0.65)),
             DEL: dict(core=(0.08, 0.3), cap=(0.5, 0.9))},
        het_art=0.22,
    ),
    "intrahepatic_cholangiocarcinoma": dict(
        count=((1, 2, 3), (0.7, 0.2, 0.1)), size=(0.25, 1.0), edge=0.15, lob=0.15, het=0.06,
        fat=(0.0, 0.0, 0.0), cirrhosis=0.1, rim_t=(0.25, 0.45), duct=0.45,
        ratio={T2: dict(core=(1.15, 1.8), rim=(1.5, 2.4)), DWI: dict(core=(1.0, 1.6), rim=(1.4, 2.3)),
               INP: dict(core=(0.5, 0.8)), PRE: dict(core=(0.5, 0.78))},
        enh={ART: dict(core=(0.0, 0.2), rim=(0.45, 0.9)),
             VEN: dict(core=(0.3, 0.55), rim=(0.4, 0.7)),
             DEL: dict(core=(0.55, 0.9), rim=(0.3, 0.5))},
    ),
    "hepatic_metastasis": dict(
        count=((1, 2, 3, 4), (0.3, 0.3, 0.25, 0.15)), size=(0.0, 0.85), edge=0.10, lob=0.10,
        het=0.06, fat=(0.0, 0.0, 0.0), rim_t=(0.25, 0.45), hypervascular=0.25, hypovascular=0.3,
        ratio={T2: dict(core=(1.4, 2.4), rim=(1.2, 1.7)), DWI: dict(core=(1.3, 2.0), rim=(1.7, 2.6)),
               INP: dict(core=(0.5, 0.8)), PRE: dict(core=(0.5, 0.78))},
        enh={ART: dict(core=(0.0, 0.2), rim=(0.45, 0.85)),
             VEN: dict(core=(0.1, 0.3), rim=(0.35, 0.6)),
             DEL: dict(core=(0.1, 0.3), rim=(0.15, 0.3))},
    ),
    "hepatic_abscess": dict(
        count=((1, 2, 3), (0.55, 0.3, 0.15)), size=(0.1, 0.95), edge=0.10, lob=0.10, het=0.05,
        fat=(0.0, 0.0, 0.0), rim_t=(0.2, 0.35), halo=(0.65, 0.3, 0.6), double=0.5,
        ratio={T2: dict(core=(2.4, 3.6), rim=(1.3, 1.8), halo=(1.1, 1.4)),
               DWI: dict(core=(1.8, 2.8), rim=(1.2, 1.6), halo=(1.05, 1.2)),
               INP: dict(core=(0.35, 0.6), rim=(0.6, 0.8)),
               PRE: dict(core=(0.3, 0.55), rim=(0.6, 0.8), halo=(0.9, 1.0))},
        enh={ART: dict(core=(0.0, 0.0), rim=(0.5, 0.9), cap=(0.1, 0.2), halo=(1.05, 1.25)),
             VEN: dict(core=(0.0, 0.03), rim=(0.5, 0.8), cap=(0.3, 0.5), halo=(1.0, 1.1)),
             DEL: dict(core=(0.0, 0.06), rim=(0.3, 0.65), cap=(0.35, 0.6), halo=(0.97, 1.03))},
    ),
}

# Per-case randomness shared by all classes.
CONSPICUITY = (0.38, 1.2)      # exponent on every lesion/liver ratio and factor on enhancement
ARTERIAL_TIMING = (0.35, 1.2)  # early vs late arterial acquisition: factor on arterial enhancement
DELAY_TIMING = (0.6, 1.2)      # 3-5 min delayed acquisition: factor on delayed enhancement
PHASE_JITTER = 0.12            # log-normal sigma of each phase's lesion contrast, independently
TISSUE_JITTER = 0.07           # log-normal sigma of each tissue's signal per phase (scanner)

_DX_SYNONYM = {
    "hepatic_hemangioma": "hepatic hemangioma",
    "intrahepatic_cholangiocarcinoma": "intrahepatic cholangiocarcinoma (ICC)",
    "hepatic_abscess": "hepatic abscess",
    "hepatic_metastasis": "hepatic metastasis",
    "hepatic_cyst": "hepatic cyst",
    "focal_nodular_hyperplasia": "focal nodular hyperplasia (FNH)",
    "hepatocellular_carcinoma": "hepatocellular carcinoma (HCC)",
}
_CONFUSABLE = {
    "hepatic_hemangioma": ("hepatic_cyst", "focal_nodular_hyperplasia", "hepatic_metastasis"),
    "intrahepatic_cholangiocarcinoma": ("hepatic_metastasis", "hepatocellular_carcinoma"),
    "hepatic_abscess": ("hepatic_metastasis", "hepatic_cyst", "intrahepatic_cholangiocarcinoma"),
    "hepatic_metastasis": ("intrahepatic_cholangiocarcinoma", "hepatic_abscess",
                           "hepatocellular_carcinoma"),
    "hepatic_cyst": ("hepatic_hemangioma", "hepatic_abscess"),
    "focal_nodular_hyperplasia": ("hepatocellular_carcinoma", "hepatic_hemangioma"),
    "hepatocellular_carcinoma": ("focal_nodular_hyperplasia", "hepatic_metastasis",
                                 "intrahepatic_cholangiocarcinoma"),
}


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------
def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation matrix (cell-centred grids)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    w = (pos - i0).astype(np.float32)
    a = np.zeros((n_out, n_in), np.float32)
    a[np.arange(n_out), i0] = 1 - w
    if n_in > 1:
        a[np.arange(n_out), i0 + 1] += w
    return a


def _coarse_noise(rng: np.random.Generator, size: int, grid: int = 8) -> np.ndarray:
    """A very smooth unit-std random field: ``smooth_noise`` on a coarse grid, upsampled
    separably with three matrix products (much faster than a wide full-size Gaussian)."""
    f = smooth_noise(rng, (grid, grid, grid), 1.0)
    a = _interp_matrix(grid, size)
    t = np.tensordot(a, f, axes=(1, 0))         # (S, g, g)
    t = np.matmul(a, t)                          # (S, S, g)
    return (t @ a.T).astype(np.float32)          # (S, S, S)


def _box(center: np.ndarray, half: np.ndarray | float, size: int) -> tuple[slice, slice, slice]:
    lo = np.maximum(np.floor(center - half).astype(int), 0)
    hi = np.minimum(np.ceil(center + half).astype(int) + 1, size)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _paint_tube(lab: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, value: int,
                within: np.ndarray | None = None) -> None:
    """Set voxels within ``radius`` of segment a-b (voxel coordinates) to ``value``."""
    size = lab.shape[0]
    lo = np.maximum(np.floor(np.minimum(a, b) - radius - 1).astype(int), 0)
    hi = np.minimum(np.ceil(np.maximum(a, b) + radius + 2).astype(int), size)
    if np.any(hi <= lo):
        return
    sl = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
    g = np.ogrid[sl[0], sl[1], sl[2]]
    d = b - a
    dd = float(d @ d) + 1e-6
    t = np.clip(((g[0] - a[0]) * d[0] + (g[1] - a[1]) * d[1] + (g[2] - a[2]) * d[2]) / dd, 0, 1)
    dist2 = ((g[0] - a[0] - t * d[0]) ** 2 + (g[1] - a[1] - t * d[1]) ** 2
             + (g[2] - a[2] - t * d[2]) ** 2)
    sel = dist2 < radius * radius
    if within is not None:
        sel &= within[sl]
    lab[sl][sel] = value


def _ring_soft(x: np.ndarray, soft: float) -> np.ndarray:
    """Soft step: 0 for x << 0, 1 for x >> 0, linear over ``soft``."""
    return np.clip(x / soft + 0.5, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Anatomy
# ---------------------------------------------------------------------------------------------
def _anatomy(rng: np.random.Generator, size: int, cirrhosis: bool) -> dict:
    s = size
    j = lambda k=0.02: rng.uniform(-k, k)  # noqa: E731  (position jitter, normalised units)
    c = (np.arange(s, dtype=np.float32) + 0.5) / s
    x2, y2 = c[:, None], c[None, :]
    # body cross-section: skin ellipse, subcutaneous fat, muscle wall, viscera
    bcx, bcy = 0.5 + j(0.01), 0.47 + j(0.01)
    ax, ay = 0.46 + j(0.02), 0.36 + j(0.02)
    fat_t = rng.uniform(0.025, 0.075)
    mus_t = rng.uniform(0.02, 0.03)

    def ell2(cx, cy, rx, ry):
        return ((x2 - cx) / rx) ** 2 + ((y2 - cy) / ry) ** 2 < 1

    lab2 = np.zeros((s, s), np.uint8)
    lab2[ell2(bcx, bcy, ax, ay)] = FAT
    lab2[ell2(bcx, bcy, ax - fat_t, ay - fat_t)] = MUSCLE
    inner = ell2(bcx, bcy, ax - fat_t - mus_t, ay - fat_t - mus_t)
    lab2[inner] = VISCERA
    # retroperitoneal fat band anterior to the spine, spine, paraspinal muscles, canal
    lab2[ell2(0.5, bcy - 0.18, 0.2, 0.09) & inner] = FAT
    lab2[ell2(0.5, bcy - 0.26, 0.065, 0.06)] = BONE
    lab2[ell2(0.5, bcy - 0.34, 0.022, 0.022)] = FLUID
    for side in (-1, 1):
        lab2[ell2(0.5 + side * 0.1, bcy - 0.3, 0.05, 0.06) & inner] = MUSCLE
    lab = np.repeat(lab2[:, :, None], s, axis=2)
    body_inner = inner[:, :, None]

    # liver: union of right and left lobes (normalised ellipsoidal fields), deformed
    shrink = 0.9 if cirrhosis else 1.0
    cr = np.array([0.64 + j(), 0.52 + j(), 0.62 + j()]) * s
    rr = np.array([0.19 * shrink + j(), 0.2 + j(), 0.2 + j()]) * s
    cl = np.array([0.42 + j(), 0.6 + j(), 0.68 + j()]) * s
    rl = np.array([0.14 + j(), 0.11 + j(), 0.11 + j(0.015)]) * s
    field = np.minimum(ellipsoid(lab.shape, cr, rr), ellipsoid(lab.shape, cl, rl))
    field += rng.uniform(0.08, 0.14) * _coarse_noise(rng, s)
    liver = (field < 1.0) & body_inner
    lab[liver] = LIV
    # spleen (larger with portal hypertension), kidneys, gallbladder
    sp_scale = rng.uniform(1.15, 1.35) if cirrhosis else 1.0
    spleen = ellipsoid(lab.shape, np.array([0.22 + j(), 0.36 + j(), 0.62 + j()]) * s,
                       np.array([0.07, 0.11, 0.12]) * sp_scale * s) < 1
    lab[spleen & body_inner & ~liver] = SPLEEN
    for kx, kz in ((0.68, 0.33), (0.32, 0.38)):
        kid = ellipsoid(lab.shape, np.array([kx + j(), bcy - 0.2 + j(0.01), kz + j()]) * s,
                        np.array([0.05, 0.055, 0.1]) * s) < 1
        lab[kid & ~liver] = KIDNEY
    gallbladder = rng.random() < 0.85
    if gallbladder:
        gb = ellipsoid(lab.shape, np.array([0.56 + j(), 0.68 + j(), 0.42 + j()]) * s,
                       np.array([0.035, 0.035, 0.07]) * s) < 1
        lab[gb & body_inner] = FLUID
    # aorta and IVC (vertical tubes), portal venous tree and hepatic veins
    ao = np.array([0.46 + j(0.01), bcy - 0.16, 0.0]) * s
    _paint_tube(lab, ao, ao + np.array([0, 0, s]), 0.042 * s, AORTA)
    ivc = np.array([0.58 + j(0.01), bcy - 0.14, 0.0]) * s
    ivc_top = ivc + np.array([0, 0, 0.82 * s])
    _paint_tube(lab, ivc, ivc_top, 0.038 * s, IVC)
    r_pv = max(0.022 * s, 0.8)
    r_br = max(0.015 * s, 0.7)
    r_hv = max(0.013 * s, 0.6)
    hilum = np.array([0.55 + j(), 0.5 + j(), 0.52 + j()]) * s
    trunk = np.array([0.5, 0.42, 0.36]) * s
    _paint_tube(lab, trunk, hilum, r_pv, PORTAL, within=body_inner & ~(lab == BONE))
    right = np.array([0.73 + j(), 0.48 + j(), 0.56 + j()]) * s
    left = np.array([0.4 + j(), 0.6 + j(), 0.64 + j()]) * s
    _paint_tube(lab, hilum, right, r_br, PORTAL, within=liver)
    _paint_tube(lab, hilum, left, r_br, PORTAL, within=liver)
    for tip in ([0.78, 0.6, 0.66], [0.74, 0.36, 0.5]):
        _paint_tube(lab, right, (np.array(tip) + [j(), j(), j()]) * s, r_hv, PORTAL, within=liver)
    conf = np.array([ivc_top[0] / s, bcy - 0.12, 0.8]) * s
    for tip in ([0.8, 0.5, 0.62], [0.6, 0.64, 0.6], [0.42, 0.6, 0.72]):
        _paint_tube(lab, conf, (np.array(tip) + [j(), j(), j()]) * s, r_hv, HEPATIC, within=liver)
    envelope = liver & ((lab == LIV) | (lab == PORTAL) | (lab == HEPATIC))  # liver incl. its veins
    liver = lab == LIV  # parenchyma proper (vessels excluded)
    return dict(lab=lab, liver=liver, envelope=envelope, field=field, hilum=hilum,
                gallbladder=gallbladder)


def _segment(center: np.ndarray, bbox: tuple[np.ndarray, np.ndarray]) -> tuple[str, str]:
    """Couinaud segment (approximate, from position within the liver's bounding box)."""
    lo, hi = bbox
    u, v, w = (center - lo) / np.maximum(hi - lo, 1)   # u: to patient's right, v: anterior, w: up
    sup = w > 0.55
    if u < 0.28:
        return ("II", "left lateral section") if sup else ("III", "left lateral section")
    if u < 0.47:
        if v < 0.35 and u > 0.38:
            return "I", "caudate lobe"
        return ("IVa", "left medial section") if sup else ("IVb", "left medial section")
    if v >= 0.5:
        return ("VIII", "right anterior section") if sup else ("V", "right anterior section")
    return ("VII", "right posterior section") if sup else ("VI", "right posterior section")


# ---------------------------------------------------------------------------------------------
# Lesion parameters
# ---------------------------------------------------------------------------------------------
def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _draw_look(rng: np.random.Generator, label: str, spec: dict,
               conspicuity: tuple[float, float] = CONSPICUITY) -> dict:
    """Per-case appearance: compartment ratios / enhancements per phase, with conspicuity."""
    gamma = float(rng.uniform(*conspicuity))
    look: dict = dict(gamma=gamma, flags={})
    fl = look["flags"]
    fl["scar"] = "scar" in spec and rng.random() < spec["scar"][0]
    fl["scar_r"] = _u(rng, spec["scar"][1:]) if fl["scar"] else 0.0
    fl["capsule"] = "capsule" in spec and rng.random() < spec["capsule"][0]
    fl["cap_t"] = _u(rng, spec["capsule"][1:]) if "capsule" in spec else 0.12
    fl["halo"] = "halo" in spec and rng.random() < spec["halo"][0]
    fl["halo_w"] = _u(rng, spec["halo"][1:]) if fl["halo"] else 0.0
    fl["double_rim"] = "double" in spec and rng.random() < spec["double"]
    fl["flash"] = "flash" in spec and rng.random() < spec["flash"]
    fl["slow"] = not fl["flash"] and "slow" in spec and rng.random() < spec["slow"]
    u_vasc = rng.random()
    fl["hypervascular"] = "hypervascular" in spec and u_vasc < spec["hypervascular"]
    fl["hypovascular"] = "hypovascular" in spec and 1.0 - u_vasc < spec["hypovascular"]
    fl["duct"] = "duct" in spec and rng.random() < spec["duct"]
    fl["complicated"] = "complicated" in spec and rng.random() < spec["complicated"]
    p_fat, lo, hi = spec["fat"]
    fl["fat"] = rng.random() < p_fat
    fl["fat_drop"] = float(rng.uniform(lo, hi)) if fl["fat"] else float(rng.uniform(0.0, 0.04))
    fl["rim_t"] = _u(rng, spec["rim_t"]) if "rim_t" in spec else 0.0
    if label == "hepatic_abscess":
        fl["rim_t"] *= 1.0 if not fl["double_rim"] else 1.3

    ratios: dict[str, dict[str, float]] = {}
    for ph in NONCONTRAST:
        jit = float(rng.normal(0.0, PHASE_JITTER))
        comp = {k: _u(rng, v) for k, v in spec["ratio"][ph].items()}
        if fl["complicated"]:  # proteinaceous / haemorrhagic cyst: less T2-bright, T1 near-iso
            comp["core"] = {T2: comp["core"] * _u(rng, (0.55, 0.8)), DWI: _u(rng, (0.8, 1.3)),
                            INP: _u(rng, (0.6, 0.95)), PRE: _u(rng, (0.6, 0.95))}[ph]
        out = {}
        for k, v in comp.items():
            if k == "halo" and not fl["halo"]:
                continue
            if k == "scar" and not fl["scar"]:
                continue
            out[k] = float(np.exp(gamma * np.log(v) + jit))
        ratios[ph] = out
    enh: dict[str, dict[str, float]] = {}
    timing = {ART: float(rng.uniform(*ARTERIAL_TIMING)), VEN: 1.0,
              DEL: float(rng.uniform(*DELAY_TIMING))}
    look["timing"] = timing
    for ph in CONTRAST:
        g = gamma * float(np.exp(rng.normal(0.0, PHASE_JITTER))) * timing[ph]
        comp = {k: _u(rng, v) for k, v in spec["enh"][ph].items()}
        out = {}
        for k, v in comp.items():
            if k == "fill":
                out[k] = 1.0 if fl["flash"] else v
            elif k == "halo":
                if fl["halo"]:
                    out[k] = float(np.exp(gamma * np.log(v)))
            elif k == "scar" and not fl["scar"]:
                continue
            elif k == "cap" and not (fl["capsule"] or fl["double_rim"]):
                continue
            else:
                out[k] = v * g
        if fl["slow"] and ph == ART:  # slow-filling hemangioma: few faint arterial nodules
            out["fill"] *= 0.4
            out["nod"] *= 0.5
        if fl["hypovascular"] and ph in (ART, VEN):  # faint, thin peripheral enhancement only
            out["rim"] *= rng.uniform(0.25, 0.45) if ph == ART else rng.uniform(0.5, 0.7)
            out["core"] *= 0.3
        if fl["hypervascular"] and ph == ART:
            out["core"] = _u(rng, (0.5, 0.9)) * g
        if fl["hypervascular"] and ph == VEN:
            out["core"] = max(out["core"], _u(rng, (0.2, 0.4)) * g)
        enh[ph] = out
    if fl["flash"]:
        for ph in CONTRAST:
            enh[ph]["core"] = enh[ph]["nod"]
    look.update(ratio=ratios, enh=enh, het=spec["het"], het_art=spec.get("het_art", spec["het"]))
    return look


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _composite(field: dict[str, np.ndarray], w: dict[str, np.ndarray], vals: dict[str, float]):
    """Core value blended with rim, scar, capsule where their weights are non-zero."""
    out = np.full(field["r"].shape, vals["core"], np.float32)
    for k in ("rim", "scar", "cap"):
        if k in vals and k in w:
            out += (vals[k] - out) * w[k]
    return out


def _render_lesion(rng, vols, liver, center, rvox, look, spec, ctx, size):
    """Paint one lesion into every phase (in its bounding box); returns (box, mask, stats)."""
    fl = look["flags"]
    liver_ref, gain = ctx["liver_ref"], ctx["gain"]
    radii = rvox * rng.uniform(0.85, 1.15, 3)
    halo_w = fl["halo_w"]
    box = _box(center, radii.max() * (1.0 + halo_w) + 2.5, size)
    shape = tuple(sl.stop - sl.start for sl in box)
    local_c = center - np.array([sl.start for sl in box])
    soft = 0.6 / rvox + spec["edge"]
    r = ellipsoid(shape, local_c, radii)
    r = r + spec["lob"] * smooth_noise(rng, shape, 1.0) * np.minimum(r, 1.5)
    inside_liver = liver[box]
    w_les = _ring_soft(1.0 - r, soft) * inside_liver
    mask = (r < 1.0) & inside_liver
    fields = {"r": r}
    w: dict[str, np.ndarray] = {}
    if fl["rim_t"] > 0:
        rim_t = max(fl["rim_t"], 0.9 / rvox)
        w["rim"] = _ring_soft(r - (1.0 - rim_t), 0.5 / rvox)
    if fl["scar"]:
        rs = r + 0.25 * smooth_noise(rng, shape, 0.8)
        w["scar"] = _ring_soft(fl["scar_r"] - rs, 0.5 / rvox)
    if fl["capsule"] or fl["double_rim"]:
        cap_t = max(fl["cap_t"], 0.7 / rvox)
        w["cap"] = _ring_soft(r - (1.0 - cap_t), 0.4 / rvox)
    tex = smooth_noise(rng, shape, 0.8)
    nod = smooth_noise(rng, shape, 1.0)
    w_halo = None
    if fl["halo"]:
        w_halo = np.clip(1.0 - (r - 1.0) / halo_w, 0, 1) * (r >= 1.0) * inside_liver * (1 - w_les)

    sig: dict[str, np.ndarray] = {}
    for ph in NONCONTRAST:
        vals = look["ratio"][ph]
        sig[ph] = _composite(fields, w, vals) * (1 + look["het"] * tex) * liver_ref[ph]
    # opposed phase: in-phase signal minus the lesion's own fat drop (the liver's drop is
    # in liver_ref[OutPhase], so a non-fatty lesion in a steatotic liver looks relatively bright)
    sig[OUTP] = sig[INP] * (1.0 - fl["fat_drop"]) * ctx["outin_base"]
    for ph in CONTRAST:
        vals = dict(look["enh"][ph])
        het = look["het_art"] if ph == ART else look["het"]
        if "fill" in vals:   # hemangioma: nodular centripetal fill-in
            front = 1.0 - vals["fill"]
            wf = _ring_soft(r - front + 0.22 * nod, 0.5 / rvox)
            if vals["fill"] < 0.5:
                wf = wf * np.clip((nod + 0.4) / 0.5, 0, 1)
            e = vals["core"] + (vals["nod"] - vals["core"]) * wf
        else:
            e = _composite(fields, w, vals)
        sig[ph] = sig[PRE] + e * gain[ph] * (1 + het * tex)
    stats = {}
    solid = mask & (w_les > 0.75)       # report statistics away from the partial-volume edge
    solid = solid if solid.any() else mask
    core_sel = solid & (r < 0.5)
    peri_sel = solid & (r > 0.7)
    for ph in PHASES:
        sub = vols[ph][box]
        if w_halo is not None:
            src = look["ratio"].get(INP if ph == OUTP else ph) or look["enh"].get(ph, {})
            h = src.get("halo")
            if h is not None:
                sub *= 1.0 + (h - 1.0) * w_halo
        sub += (sig[ph] - sub) * w_les
        mean = float(sub[solid].mean()) if solid.any() else 0.0
        stats[ph] = dict(
            mean=mean,
            core=float(sub[core_sel].mean()) if core_sel.any() else mean,
            peri=float(sub[peri_sel].mean()) if peri_sel.any() else mean,
        )
    return box, mask, stats


def _place_centers(rng, field, liver, rvox_list, size):
    """Lesion centres deep enough inside the liver and not overlapping each other."""
    centers: list[np.ndarray] = []
    cand_all = np.flatnonzero(liver)
    liver_r = 0.19 * size
    for rv in rvox_list:
        depth = 1.0 - min(0.55, 0.9 * rv / liver_r) - 0.08
        cand = cand_all[field.ravel()[cand_all] < depth]
        if cand.size == 0:
            cand = cand_all[field.ravel()[cand_all] < 0.6]
        if cand.size == 0:
            cand = cand_all
        best = None
        for _ in range(30):
            p = np.array(np.unravel_index(cand[rng.integers(cand.size)], liver.shape), float)
            p += rng.uniform(-0.5, 0.5, 3)
            ok = all(np.linalg.norm(p - q) > (rv + rq) * 1.25 + 1 for q, rq in zip(centers, rvox_list))
            if ok:
                best = p
                break
            best = p if best is None else best
        centers.append(best)
    return centers


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
_INT_WORDS = (
    (2.6, ("markedly hyperintense", "strongly hyperintense", "very bright")),
    (1.6, ("hyperintense", "clearly hyperintense", "moderately hyperintense")),
    (1.15, ("mildly hyperintense", "slightly hyperintense")),
    (0.87, ("isointense", "near-isointense", "approximately isointense")),
    (0.65, ("mildly hypointense", "slightly hypointense")),
    (0.42, ("hypointense", "moderately hypointense")),
    (-1.0, ("markedly hypointense", "very hypointense")),
)
_ENH_WORDS = (
    (1.35, ("clearly hyperenhancing", "markedly hyperenhancing")),
    (1.1, ("mildly hyperenhancing", "slightly hyperenhancing")),
    (0.9, ("isoenhancing", "isointense")),
    (0.6, ("hypoenhancing", "mildly hypointense")),
    (-1.0, ("markedly hypoenhancing", "clearly hypointense")),
)
_NUM = {2: "Two", 3: "Three", 4: "Four"}


def _word(rng, table, ratio: float) -> str:
    for thr, words in table:
        if ratio >= thr:
            return pick(rng, list(words))
    return pick(rng, list(table[-1][1]))


def _reports(rng, label: str, look: dict, info: dict) -> dict[str, str]:
    fl = look["flags"]
    st = info["stats"]
    ref = info["liver_ref"]
    n, d, seg, lobe = info["n"], info["diam_mm"], info["segment"], info["lobe"]
    seg_txt = "the caudate lobe (segment I)" if seg == "I" else pick(
        rng, [f"segment {seg}", f"segment {seg} ({lobe})", f"segment {seg} of the "
              f"{'right' if lobe.startswith('right') else 'left'} lobe"])
    ratio = {ph: st[ph]["mean"] / ref[ph] for ph in PHASES}

    def subj(cap: bool = True) -> tuple[str, str]:
        if n == 1:
            s = pick(rng, [f"a {d} mm lesion in {seg_txt}", f"a {d} mm focal lesion in {seg_txt}",
                           f"the {d} mm lesion in {seg_txt}", f"a {d} mm mass in {seg_txt}"])
            verb = "is"
        else:
            num = _NUM[n].lower()
            opts = [f"{num} lesions, the largest {d} mm in {seg_txt},",
                    f"{num} focal lesions, the largest measuring {d} mm in {seg_txt},"]
            if n > 2:
                opts.append(f"multiple ({n}) lesions, the dominant one {d} mm in {seg_txt},")
            s = pick(rng, opts)
            verb = "are"
        return (s[0].upper() + s[1:] if cap else s), verb

    rep: dict[str, str] = {}
    # T2WI
    s, v = subj()
    extras = []  # noun phrases, rendered "with A, B and C"
    if label == "hepatic_cyst":
        extras.append(pick(rng, ["sharp, well-defined margins", "a thin imperceptible wall",
                                 "smooth, sharp margins"]))
    elif label == "hepatic_hemangioma":
        extras.append(pick(rng, ["lobulated margins", "well-circumscribed lobulated borders"]))
    elif label == "intrahepatic_cholangiocarcinoma":
        extras.append(pick(rng, ["ill-defined infiltrative margins", "irregular margins"]))
    if fl["scar"]:
        extras.append(pick(rng, ["a T2-hyperintense central scar", "a bright central scar"]))
    if fl["rim_t"] > 0 and label != "hepatic_abscess":
        peri_hi = st[T2]["peri"] > st[T2]["core"] * 1.05
        extras.append("a brighter periphery" if peri_hi else "a brighter centre")
    if fl["halo"]:
        extras.append(pick(rng, ["a T2-hyperintense halo of perilesional oedema",
                                 "surrounding perilesional oedema"]))
    if label == "hepatocellular_carcinoma":
        extras.append(pick(rng, ["heterogeneous internal signal", "mildly heterogeneous signal"]))
    t2 = f"{s} {v} {_word(rng, _INT_WORDS, ratio[T2])} on T2-weighted images"
    if extras:
        t2 += " with " + (extras[0] if len(extras) == 1 else
                          ", ".join(extras[:-1]) + " and " + extras[-1])
    t2 += "."
    if info["cirrhosis"]:
        t2 += " " + pick(rng, ["The liver is nodular with a coarse parenchymal texture, in keeping "
                               "with cirrhosis.",
                               "Background cirrhotic liver morphology with splenomegaly."])
    if fl["duct"]:
        t2 += " " + pick(rng, ["A dilated peripheral bile duct is seen upstream of the lesion.",
                               "There is upstream intrahepatic biliary dilatation."])
    rep[T2] = t2
    # DWI
    s, v = subj()
    w = _word(rng, _INT_WORDS, ratio[DWI])
    tail = ""
    if ratio[DWI] > 1.5:
        tail = pick(rng, [", consistent with restricted diffusion",
                          ", indicating diffusion restriction"])
    elif ratio[DWI] < 1.0:
        tail = pick(rng, [", without restricted diffusion", "; no diffusion restriction"])
    if fl["rim_t"] > 0 and st[DWI]["peri"] > st[DWI]["core"] * 1.1:
        tail += pick(rng, [", with a target appearance", ", with a brighter rim"])
    elif label == "hepatic_abscess" and st[DWI]["core"] > max(st[DWI]["peri"], 1.6 * ref[DWI]):
        tail += pick(rng, [", most marked centrally", ", with very high central signal"])
    rep[DWI] = f"{s} {v} {w} on diffusion-weighted images (b = 800 s/mm²){tail}."
    # InPhase
    s, v = subj(cap=False)
    w = _word(rng, _INT_WORDS, ratio[INP])
    rep[INP] = pick(rng, [f"On in-phase T1-weighted images {s} {v} {w} relative to liver.",
                          f"In-phase GRE: {s} {v} {w}."])
    # OutPhase
    s, v = subj()
    drop = 1.0 - st[OUTP]["mean"] / max(st[INP]["mean"], 1e-6) / info["outin_base"]
    if drop > 0.12:
        tail = pick(rng, [" with signal loss relative to in-phase images, indicating intralesional fat",
                          ", showing signal drop on opposed-phase imaging (microscopic fat)"])
    else:
        tail = pick(rng, [" without signal loss compared with in-phase images",
                          "; no signal drop on opposed-phase imaging"])
    out = f"{s} {v} {_word(rng, _INT_WORDS, ratio[OUTP])} on opposed-phase images{tail}."
    if info["steatosis"]:
        out += " " + pick(rng, ["The background liver loses signal on opposed-phase images, "
                                "consistent with steatosis.",
                                "Diffuse hepatic steatosis."])
    rep[OUTP] = out
    # C-pre
    s, v = subj(cap=False)
    w = _word(rng, _INT_WORDS, ratio[PRE])
    rep[PRE] = pick(rng, [f"On pre-contrast fat-suppressed T1-weighted images {s} {v} {w}.",
                          f"Pre-contrast T1: {s} {v} {w} to liver."])
    if fl["complicated"]:
        rep[PRE] += " " + pick(rng, ["The relatively high T1 signal suggests proteinaceous or "
                                     "haemorrhagic content.", "Intrinsic T1 signal is higher than "
                                     "expected for simple fluid."])
    # contrast phases
    for ph, name in ((ART, "arterial"), (VEN, "portal venous"), (DEL, "delayed")):
        s, _ = subj()
        pat = _enhancement_pattern(rng, label, ph, name, look, info, ratio)
        enhancing = pat is not None
        if pat is None:
            pat = pick(rng, [f"shows no enhancement in the {name} phase",
                             f"does not enhance in the {name} phase",
                             f"remains non-enhancing in the {name} phase"])
        if n > 1:
            first, _, rest = pat.partition(" ")
            pat = f"{_PLURAL_VERB.get(first, first)} {rest}"
        if not enhancing:
            rep[ph] = f"{s} {pat}."
        else:
            rel = _word(rng, _ENH_WORDS, ratio[ph])
            rep[ph] = f"{s} {pat} ({rel} relative to liver in the {name} phase)."
    rep["global"] = _impression(rng, label, n, d, seg, info)
    return rep


_PLURAL_VERB = {"shows": "show", "demonstrates": "demonstrate", "fades": "fade", "remains": "remain",
                "fills": "fill", "is": "are", "retains": "retain", "does": "do"}


def _enhancement_pattern(rng, label: str, ph: str, name: str, look: dict, info: dict,
                         ratio: dict[str, float]) -> str | None:
    """Verb phrase (singular) describing the lesion's enhancement in contrast phase ``ph``;
    None when the lesion does not enhance (measured against its own C-pre signal)."""
    fl, st, ref = look["flags"], info["stats"], info["liver_ref"]
    enh = (st[ph]["mean"] - st[PRE]["mean"]) / ref[PRE]
    if enh < 0.06 and st[ph]["peri"] - st[PRE]["peri"] < 0.06 * ref[PRE]:
        return None
    if label == "hepatic_hemangioma":
        blood = st[ph]["peri"] / info["blood_ref"][ph]
        pool = ", following the blood pool" if 0.8 < blood < 1.25 else ", with persistent enhancement"
        if fl["flash"]:
            return ("shows homogeneous flash-filling enhancement" if ph == ART else
                    "retains contrast" + pool)
        if ph == ART:
            return pick(rng, ["shows peripheral nodular discontinuous enhancement",
                              "demonstrates peripheral, discontinuous nodular enhancement"])
        if ph == VEN:
            return pick(rng, ["shows progressive centripetal fill-in",
                              "demonstrates centripetal progression of the nodular enhancement"])
        pat = ("shows near-complete fill-in" if look["enh"][ph]["fill"] < 0.95 else
               "is completely filled in")
        return pat + pool
    if label == "focal_nodular_hyperplasia":
        if ph == ART:
            pat = ("shows intense homogeneous arterial enhancement" if ratio[ph] >= 1.3 else
                   "shows homogeneous arterial enhancement" if ratio[ph] >= 1.05 else
                   "shows homogeneous arterial enhancement, only near-isointense to liver")
            return pat + (", sparing the central scar" if fl["scar"] else "")
        if ph == VEN:
            return "fades towards the background liver"
        return "is similar to the background liver" + (
            ", with delayed enhancement of the central scar" if fl["scar"] else "")
    if label == "hepatocellular_carcinoma":
        if ph == ART:
            if ratio[ph] >= 1.1:
                return pick(rng, ["shows heterogeneous non-rim arterial phase hyperenhancement",
                                  "demonstrates heterogeneous arterial hyperenhancement"])
            return "shows heterogeneous arterial enhancement without definite hyperenhancement"
        core = st[ph]["core"] / ref[ph]  # washout judged inside the capsule
        pat = "shows washout" if core < 0.92 else "shows no definite washout"
        if fl["capsule"]:
            pat += pick(rng, [" with an enhancing capsule", " and an enhancing peripheral capsule"])
        return pat
    if label == "intrahepatic_cholangiocarcinoma":
        if ph == ART:
            return pick(rng, ["shows irregular peripheral rim enhancement",
                              "shows rim-like arterial enhancement"])
        if ph == VEN:
            return "shows progressive enhancement extending centrally"
        return pick(rng, ["shows progressive central delayed enhancement",
                          "fills in centrally on delayed images, reflecting fibrous stroma"])
    if label == "hepatic_metastasis":
        if ph == ART:
            if fl["hypervascular"]:
                return ("shows avid arterial enhancement" if ratio[ph] >= 1.1 else
                        "shows diffuse arterial enhancement")
            if fl["hypovascular"]:
                return "shows only faint peripheral enhancement"
            return pick(rng, ["shows rim enhancement",
                              "shows continuous peripheral rim (target) enhancement"])
        if ph == VEN:
            return ("remains hypoenhancing with a persistent enhancing rim" if ratio[ph] < 0.92 else
                    "shows persistent rim enhancement")
        return ("shows peripheral washout" if st[ph]["peri"] < st[ph]["core"] else
                "remains hypoenhancing")
    if label == "hepatic_abscess":
        if ph == ART:
            pat = "shows " + ("a thick double-layered rim enhancement" if fl["double_rim"] else
                              "thick rim enhancement of the wall") + ", with a non-enhancing centre"
            return pat + (" and transient perilesional hyperenhancement" if fl["halo"] else "")
        return pick(rng, ["shows persistent enhancement of the abscess wall around a non-enhancing "
                          "fluid centre", "shows a persistently enhancing wall and a fluid centre"])
    return "shows enhancement"


_PLURAL_DX = {"hepatic hemangioma": "hepatic hemangiomas", "hepatic abscess": "hepatic abscesses",
              "hepatic metastasis": "hepatic metastases", "hepatic cyst": "hepatic cysts"}


def _impression(rng, label: str, n: int, d: int, seg: str, info: dict) -> str:
    """Global impression: diagnosis (~45%), differential (~25%) or descriptive only (~30%)."""
    desc = _DX_SYNONYM[label]
    les = "lesion" if n == 1 else "lesions"
    summary = (f"Solitary focal liver lesion, {d} mm in segment {seg}." if n == 1 else
               f"{_NUM[n]} focal liver lesions, largest {d} mm in segment {seg}.")
    u = rng.random()
    if u < 0.45:
        mode = "diagnosis"
        dx = _PLURAL_DX.get(desc, desc) if n > 1 else desc
        imp = pick(rng, [f"Findings are consistent with {dx}.",
                         f"Imaging features are typical of {dx}.",
                         f"Impression: {dx}.", f"Most likely {dx}."])
    elif u < 0.7:
        mode = "differential"
        others = list(_CONFUSABLE[label])
        k = 1 + int(rng.random() < 0.5) if len(others) > 1 else 1
        chosen = [others[i] for i in rng.permutation(len(others))[:k]] + [label]
        names = [_DX_SYNONYM[chosen[i]] for i in rng.permutation(len(chosen))]
        lst = ", ".join(names[:-1]) + " and " + names[-1]
        imp = pick(rng, [f"Differential diagnosis includes {lst}.",
                         f"Differential considerations: {lst}."])
    else:
        mode = "descriptive"
        imp = pick(rng, [f"Indeterminate focal liver {les}; further characterisation recommended.",
                         f"Focal liver {les} of uncertain nature; correlation with clinical history "
                         "and follow-up imaging advised.",
                         f"Focal hepatic {les} as described; tissue sampling or follow-up may be "
                         "considered."])
    info["impression"] = mode
    return summary + " " + imp


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def simulate_case(rng: np.random.Generator, label: str, cfg: SimConfig) -> SimCase:
    """One synthetic 8-phase liver MRI study with ``label``-class lesion(s).

    Pure function of the generator's state and ``cfg``. Volumes are float32 (S, S, S) in RAS
    voxel order; ``mask`` (uint8) marks every lesion voxel in the reference (T2WI) grid.
    """
    if label not in CLASS_SPECS:
        raise ValueError(f"unknown liver class {label!r}; use one of: {', '.join(LIVER.classes)}")
    spec = CLASS_SPECS[label]
    size, sp = cfg.size, cfg.spacing_mm
    seeds = rng.integers(0, 2**63 - 1, size=4)
    r_anat, r_les, r_art, r_txt = (np.random.default_rng(int(x)) for x in seeds)

    cirrhosis = bool(r_anat.random() < spec.get("cirrhosis", 0.05))
    steatosis = bool(r_anat.random() < 0.2)
    anat = _anatomy(r_anat, size, cirrhosis)
    lab, liver, field = anat["lab"], anat["liver"], anat["field"]

    # per-case tissue signal (scanner / patient variability) and liver state
    lut = _SIGNAL * np.exp(r_anat.normal(0, TISSUE_JITTER, _SIGNAL.shape)).astype(np.float32)
    # receiver gain per acquisition: in/opposed phase are one dual-echo acquisition and the
    # dynamic series (C-pre, C+A, C+V, C+Delay) one repeated sequence, so they share a gain
    g = r_anat.uniform(0.9, 1.1, len(PHASES)).astype(np.float32)
    g[PHASES.index(OUTP)] = g[PHASES.index(INP)]
    for ph in CONTRAST:
        g[PHASES.index(ph)] = g[PHASES.index(PRE)]
    lut *= g[None, :]
    steat = float(r_anat.uniform(0.2, 0.4)) if steatosis else 0.0
    outin_base = float(lut[LIV, PHASES.index(OUTP)] / lut[LIV, PHASES.index(INP)])
    lut[LIV, PHASES.index(OUTP)] *= 1.0 - steat
    if cirrhosis:  # fibrosis: slightly brighter T2 and delayed, mildly lower T1
        lut[LIV, PHASES.index(T2)] *= 1.1
        lut[LIV, PHASES.index(DEL)] *= 1.03
    tex_amp = _TEXTURE.copy()
    tex_amp[LIV] = r_anat.uniform(0.09, 0.14) if cirrhosis else r_anat.uniform(0.02, 0.04)
    tex = smooth_noise(r_anat, (size,) * 3, 0.8 if cirrhosis else 1.2)
    texmult = 1.0 + tex_amp[lab] * tex

    # lesions: count, sizes, positions
    look = _draw_look(r_les, label, spec, cfg.liver_conspicuity or CONSPICUITY)
    counts, probs = spec["count"]
    n = int(r_les.choice(counts, p=probs))
    lo_mm, hi_mm = cfg.lesion_radius_mm
    f0, f1 = spec["size"]
    r_main = lo_mm + (hi_mm - lo_mm) * r_les.uniform(f0, f1)
    radii_mm = [r_main] + [max(lo_mm * 0.6, r_main * r_les.uniform(0.45, 0.9)) for _ in range(n - 1)]
    rvox = [r / sp for r in radii_mm]
    centers = _place_centers(r_les, field, liver, rvox, size)
    if look["flags"]["duct"]:
        c0 = centers[0]
        vec = c0 - anat["hilum"]
        vec = vec / (np.linalg.norm(vec) + 1e-6)
        a = c0 + vec * rvox[0] * 0.8
        _paint_tube(lab, a, a + vec * rvox[0] * r_les.uniform(1.5, 3.0), max(0.9, 2.5 / sp), FLUID,
                    within=liver)
        liver = lab == LIV

    vols = {ph: lut[:, i][lab] * texmult for i, ph in enumerate(PHASES)}
    liver_ref = {ph: float(lut[LIV, i]) for i, ph in enumerate(PHASES)}
    blood_ref = {ph: float(lut[AORTA, i]) for i, ph in enumerate(PHASES)}
    ctx = dict(liver_ref=liver_ref, gain={ph: float(g[i]) for i, ph in enumerate(PHASES)},
               outin_base=outin_base)
    mask = np.zeros((size,) * 3, np.uint8)
    stats = None
    envelope = anat["envelope"]  # lesions may replace intrahepatic veins and the dilated duct
    for k, (c, rv) in enumerate(zip(centers, rvox)):
        box, m, st = _render_lesion(r_les, vols, envelope, c, rv, look, spec, ctx, size)
        mask[box] |= m.astype(np.uint8)
        if k == 0:
            stats = st
    if not mask.any():  # degenerate tiny lesion at very coarse size: mark its centre voxel
        ci = tuple(np.clip(np.round(centers[0]).astype(int), 0, size - 1))
        mask[ci] = 1

    idx = np.argwhere(liver)
    bbox = (idx.min(0).astype(float), idx.max(0).astype(float))
    seg, lobe = _segment(centers[0], bbox)
    info = dict(stats=stats, liver_ref=liver_ref, blood_ref=blood_ref, outin_base=outin_base,
                n=n, diam_mm=int(round(2 * radii_mm[0])),
                segment=seg, lobe=lobe, cirrhosis=cirrhosis, steatosis=steatosis)
    reports = _reports(r_txt, label, look, info)

    vols = apply_artefacts(r_art, vols, cfg, sp, reference=T2)
    fl = look["flags"]
    meta = dict(
        n_lesions=n, radii_mm=[round(float(r), 2) for r in radii_mm],
        centers_vox=[[round(float(x), 2) for x in c] for c in centers],
        segment=seg, lobe=lobe, cirrhosis=cirrhosis, steatosis=steatosis,
        conspicuity=round(look["gamma"], 3),
        lesion_fat=bool(fl["fat"]), capsule=bool(fl["capsule"]), central_scar=bool(fl["scar"]),
        halo=bool(fl["halo"]), double_rim=bool(fl["double_rim"]), flash_filling=bool(fl["flash"]),
        hypervascular=bool(fl["hypervascular"]), hypovascular=bool(fl["hypovascular"]),
        slow_filling=bool(fl["slow"]), dilated_duct=bool(fl["duct"]),
        complicated_cyst=bool(fl["complicated"]),
        lesion_to_liver={ph: round(stats[ph]["mean"] / liver_ref[ph], 3) for ph in PHASES},
        lesion_in_liver=round(float(envelope[mask > 0].mean()), 3),
        impression=info["impression"],
    )
    organ_mask = (envelope | (mask > 0)).astype(np.uint8)  # liver with its veins and lesions
    return SimCase(label, vols, mask, reports, (sp, sp, sp), meta, organ_mask=organ_mask)


def _range(v: tuple[float, float]) -> str:
    return f"{v[0]:g}" if v[0] == v[1] else f"{v[0]:g}-{v[1]:g}"


def _datasheet() -> str:
    """The liver section of DATASHEET.md; the numeric table is generated from CLASS_SPECS."""
    qual = {
        "hepatic_cyst": ("very bright (25% complicated: less bright)", "dark (mild shine-through)",
                         "dark, no drop (complicated: near-iso)", "dark (complicated: near-iso)",
                         "no enhancement", "no enhancement", "no enhancement", "1-3, sharp margins"),
        "hepatic_hemangioma": ("very bright (slightly < cyst)", "iso to mildly bright", "dark, no drop",
                               "dark", "peripheral nodular discontinuous (15% flash-filling, "
                               "20% slow-filling: faint)", "centripetal fill-in",
                               "near-complete fill-in, blood-pool-like", "1-2, lobulated"),
        "focal_nodular_hyperplasia": ("iso to mildly bright; scar bright (70%)", "iso to mildly bright",
                                      "iso, no drop", "iso; scar dark", "intense homogeneous, scar spared",
                                      "iso to liver", "iso; scar enhances", "1-2"),
        "hepatocellular_carcinoma": ("mildly bright, heterogeneous", "bright", "variable; fat drop on "
                                     "OutPhase (60%)", "iso to mildly dark", "heterogeneous hyper",
                                     "washout + capsule (70%)", "washout + capsule", "1-3; cirrhosis 60%"),
        "intrahepatic_cholangiocarcinoma": ("moderately bright, brighter periphery", "bright, target",
                                            "dark, no drop", "dark", "rim", "progressive",
                                            "centre brightest (delayed central)",
                                            "1-3, infiltrative; dilated duct 45%"),
        "hepatic_metastasis": ("moderate, brighter centre", "bright, target", "dark, no drop", "dark",
                               "rim/target (25% avid whole-lesion, 30% faint)", "hypo with rim",
                               "hypo, peripheral washout", "1-4 (70% multiple), small"),
        "hepatic_abscess": ("fluid centre very bright, wall moderate, oedema halo (65%)",
                            "very bright centre", "dark, no drop", "dark centre, wall grey",
                            "thick (double 50%) rim, transient perilesional hyperenhancement",
                            "persistent wall, non-enhancing centre", "persistent wall, dark centre",
                            "1-3 (clustered)"),
    }
    lines = [
        "## Liver",
        "",
        "Synthetic upper-abdomen MRI with the eight LLD-MMRI sequences, generated by",
        "`medmap.data.sim.liver.simulate_case`. Volumes are S^3 voxels over a 240 mm field of view",
        "(RAS voxel order: axis 0 towards the patient's right, axis 1 anterior, axis 2 superior),",
        "float32, tissue signal roughly in [0, 2].",
        "",
        "| sequence | simulated contrast |",
        "|---|---|",
        "| T2WI | fat-containing FSE T2: fluid very bright, fat bright, spleen > liver, flow voids dark |",
        "| DWI | b = 800 s/mm^2: restricted diffusion bright, fluid and fat dark, spleen bright |",
        "| InPhase | T1 dual-echo GRE, in-phase: fat bright, liver > spleen |",
        "| OutPhase | opposed phase: signal drop where fat and water share a voxel (steatotic liver,"
        " fat-containing HCC) |",
        "| C-pre | fat-suppressed 3D T1 GRE before contrast: fluid dark, vessels dark-grey |",
        "| C+A | late arterial phase: aorta very bright, portal vein starting, hepatic veins dark |",
        "| C+V | portal venous phase: portal and hepatic veins bright, liver at peak enhancement |",
        "| C+Delay | 3-5 min delayed phase: vessels and liver moderately bright, fibrous tissue and"
        " capsules enhance |",
        "",
        "**Anatomy.** Elliptical body cross-section with skin, subcutaneous fat of random thickness and",
        "a muscle wall; spine with canal and paraspinal muscles; retroperitoneal fat; aorta and IVC;",
        "kidneys; spleen (larger in cirrhosis); gallbladder (85%); a liver made of a right and a left",
        "lobe ellipsoid whose distance field is deformed by a smooth random field, with a portal venous",
        "tree (trunk, right and left branches) and three hepatic veins draining into the IVC. Each",
        "tissue has a signal per sequence (table in `liver._SIGNAL`) varied per case (log-normal",
        "sigma 0.07 per tissue and sequence, receiver gain 0.9-1.1 shared by the dynamic series and",
        "by the in/opposed-phase pair). Background liver: steatosis in 20% of cases (OutPhase drop",
        "20-40%), cirrhosis (coarse nodular texture, shrunken right lobe, splenomegaly) in 60% of HCC,",
        "10% of ICC and 5% of other cases. A mild parenchymal texture is present in every liver.",
        "",
        "**Lesions** are placed inside the liver (centres deep enough for the lesion to fit, lesions",
        "not overlapping), radius drawn from `SimConfig.lesion_radius_mm` (secondary lesions",
        "0.45-0.9 of the first), slightly ellipsoidal and lobulated. Each lesion has compartments",
        "(core, inner rim, central scar, thin capsule, hemangioma's nodular centripetal fill front,",
        "perilesional halo) with their own signal per sequence. The mask marks lesion voxels in the",
        "unshifted (T2WI) grid; other sequences are misregistered by up to",
        "`SimConfig.misregistration_mm`.",
        "",
        "| class | T2WI | DWI | InPhase / OutPhase | C-pre | C+A | C+V | C+Delay | lesions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cls, q in qual.items():
        lines.append(f"| {cls} | " + " | ".join(q) + " |")
    lines += [
        "",
        "Simulated parameters (uniform ranges before the per-case randomness below). Non-contrast",
        "sequences: lesion / liver signal ratio, `core` (`rim`, `scar`); contrast sequences:",
        "enhancement added to the lesion's own C-pre signal (the liver gains about 0.15 / 0.45 / 0.35",
        "on C+A / C+V / C+Delay; hemangioma `nod` is the nodule enhancement, `fill` the fraction of",
        "the radius filled).",
        "",
        "| class | " + " | ".join(NONCONTRAST + CONTRAST) + " |",
        "|---|" + "---|" * (len(NONCONTRAST) + len(CONTRAST)),
    ]
    for cls, spec in CLASS_SPECS.items():
        cells = []
        for ph in NONCONTRAST:
            cells.append(", ".join(f"{k} {_range(v)}" for k, v in spec["ratio"][ph].items()))
        for ph in CONTRAST:
            cells.append(", ".join(f"{k} {_range(v)}" for k, v in spec["enh"][ph].items()))
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Designed overlap.** Within any one sequence two or three classes share a look, so only",
        "the combination of sequences identifies the class:",
        "",
        "- T2WI: cyst, hemangioma and abscess centre are all very bright; ICC, metastasis and HCC",
        "  moderately bright; FNH near-isointense like some HCC.",
        "- DWI: HCC, ICC, metastasis and abscess restrict; hemangioma, FNH and cyst (shine-through)",
        "  are near-isointense to mildly bright.",
        "- InPhase / C-pre: cyst, hemangioma, abscess dark; ICC and metastasis mildly dark; HCC and",
        "  FNH near-isointense. Only the InPhase-to-OutPhase *difference* reveals fat in HCC, and a",
        "  steatotic background liver makes every lesion look relatively brighter on OutPhase alone.",
        "- C+A: FNH, HCC and hypervascular metastases hyperenhance; ICC, metastases and abscesses",
        "  rim-enhance; early-phase hemangioma nodules, slow-filling hemangiomas, hypovascular",
        "  metastases and cysts are mostly dark.",
        "- C+V / C+Delay: hemangioma, FNH and ICC become iso- to hyperintense; HCC and metastases wash",
        "  out; cyst and abscess centre stay dark.",
        "",
        "Per-case randomness that blurs single-sequence statistics: a conspicuity exponent",
        f"{_range(CONSPICUITY)} applied to every lesion/liver ratio and as a factor on enhancement",
        "(shared by all sequences of a case, so the *pattern* across sequences survives), arterial",
        f"timing {_range(ARTERIAL_TIMING)} and delayed timing {_range(DELAY_TIMING)} (factors on",
        f"that phase's enhancement), independent per-sequence log-normal jitter (sigma {PHASE_JITTER}),",
        "lesion size and count (size ranges and multiplicity overlap between classes), rim and",
        "capsule thickness, scar size, texture, tissue signal jitter, then blur, bias field, Rician",
        "noise and misregistration (`common.apply_artefacts`).",
        "",
        "**Reports.** One per sequence, generated from the same parameters and from the measured",
        "lesion/liver signal of the rendered (pre-artefact) image: location (Couinaud segment from",
        "the lesion position within the liver), size (largest diameter in mm), count, signal",
        "relative to liver, enhancement pattern, washout / capsule / fat drop / steatosis /",
        "cirrhosis / duct dilatation where present, with varied templates and synonyms. The global",
        "impression names the diagnosis in ~45% of cases, gives a differential that includes it in",
        "~25%, and is descriptive only (no diagnosis) in ~30%.",
        "",
        "**Separability** (`python benchmarks/sim_separability.py --organ liver --cases 350 --size 48",
        "--seed 0`: lesion-region intensity statistics, 5-fold logistic regression): single",
        "sequences reach 43-65% accuracy (7 classes, chance 14%; best C+A 65%, T2WI 58%), all",
        "sequences together 88% (seed 1: best single 63%, all 86%).",
    ]
    return "\n".join(lines) + "\n"


DATASHEET = _datasheet()
