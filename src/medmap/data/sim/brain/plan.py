"""Brain generator, lesion planning: where each lesion sits and what it is, before painting.

:func:`_plan_lesions` draws a case's subtype and lesion list in template voxel coordinates:
a meningioma-like dome on a dural attachment found by :func:`_benign_site` (convexity, falx or
skull base, located by casting rays to the brain surface, :func:`_ray_exit`), or a glioma
(white matter, superficial / periventricular / deep) or 1-3 metastases at the grey-white
junction (:func:`_draw` picks candidate voxels at a given depth below the surface). Each
lesion is a dict of its drawn cues (oedema, necrosis, T2 brightness, haemorrhage, ...);
:mod:`.lesions` paints it and :mod:`.reports` words it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medmap.data.sim.brain.specs import P
from medmap.data.sim.brain.template import Anatomy


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


def _plan_lesions(rng: np.random.Generator, label: str, anat: Anatomy,
                  radius_mm: tuple[float, float]) -> tuple[str, list[dict]]:
    """(subtype, lesions) of a ``label`` case; lesion centres (``centre_t``) in template voxels."""
    s = anat.spacing
    lo_r, hi_r = radius_mm
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
    return subtype, lesions
