"""Brain generator, lesion rendering: one planned lesion painted into the four sequences.

:func:`_paint` works in the lesion's bounding box of the output grid: the tumour's shape (an
extra-axial dome on a flat dural base oriented by :func:`_frame`, or a lobulated intra-axial
ellipsoid; lobulation from :func:`_lobulation`), its necrotic core, tumour signals relative to
the subject's grey / white matter (enhancement, heterogeneity, calcified or haemorrhagic foci),
finger-like vasogenic oedema along the white matter, a CSF cleft and a dural tail. It adds the
lesion to the mask and records the facts the reports and meta need (size, centroid, signal
ratios).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medmap.data.sim.brain.specs import _GM, _WM, P
from medmap.data.sim.common import box_slices, ellipsoid, smooth_noise


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


def _frame(n: np.ndarray) -> np.ndarray:
    """Rows: n and two unit vectors orthogonal to it."""
    a = np.array([1.0, 0, 0]) if abs(n[0]) < 0.9 else np.array([0, 1.0, 0])
    t1 = np.cross(n, a)
    t1 /= np.linalg.norm(t1)
    return np.stack([n, t1, np.cross(n, t1)]).astype(np.float32)


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
    sl = box_slices(c, ext, S)
    lo = np.array([b.start for b in sl])
    shape = tuple(b.stop - b.start for b in sl)
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
    t1 = g[0] * rng.uniform(*P["tumour_t1"])
    t2 = g[2] * (rng.uniform(1.3, 1.6) if bright else rng.uniform(0.9, 1.1))
    if les["kind"] == "extra":
        fl = g[3] * rng.uniform(0.95, 1.2)
        t1c = t1 * rng.uniform(*P["men_enhancement"])
        het = rng.uniform(0.15, 0.3) if les["hetero"] else 0.04
        enh_map = t1c * (1 - het * np.clip(0.6 - tx, 0, 2))
        n_sig = (0.0, 0.0, 0.0)  # meningiomas carry no necrosis here (see calcification)
        les["enhancement"] = "heterogeneous" if les["hetero"] else "homogeneous"
    else:
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

