"""Liver generator, anatomy: the abdomen a liver study is painted on.

:func:`_anatomy` draws an upper-abdomen label volume (tissue codes of :mod:`.specs`): an
elliptical body cross-section with skin, subcutaneous fat and a muscle wall, the spine with
its canal and paraspinal muscles, retroperitoneal fat, aorta and IVC, kidneys, spleen (larger
in cirrhosis), an optional gallbladder, and a liver made of a right and a left lobe ellipsoid
whose distance field is deformed by a smooth random field, with a portal venous tree and three
hepatic veins (tubes painted by :func:`_paint_tube`). :func:`_segment` names the Couinaud
segment of a point from its position within the liver's bounding box, for the reports.
"""

from __future__ import annotations

import numpy as np

from medmap.data.sim.common import coarse_field, ellipsoid
from medmap.data.sim.liver.specs import (
    AORTA,
    BONE,
    FAT,
    FLUID,
    HEPATIC,
    IVC,
    KIDNEY,
    LIV,
    MUSCLE,
    PORTAL,
    SPLEEN,
    VISCERA,
)


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



def _anatomy(rng: np.random.Generator, size: int, cirrhosis: bool) -> dict:
    """Label volume of one abdomen and the liver's geometry.

    Returns ``lab`` (uint8 tissue codes), ``liver`` (parenchyma, veins excluded), ``envelope``
    (liver including its intrahepatic veins), ``field`` (the liver's deformed distance field,
    < 1 inside), ``hilum`` (voxel point of the portal bifurcation) and ``gallbladder`` (bool).
    """
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
    field += rng.uniform(0.08, 0.14) * coarse_field(rng, s, 8, 1.0, "linear")
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


