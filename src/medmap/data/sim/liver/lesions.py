"""Liver generator, lesions: what a case's lesions look like, where they go, how they are painted.

:func:`_draw_look` turns a class's :data:`~.specs.CLASS_SPECS` entry into one case's
appearance: which optional features it has (scar, capsule, halo, fat, ...), and the
compartment ratios (non-contrast phases, relative to liver) and enhancements (contrast phases,
added to the lesion's own C-pre signal), all bent by the per-case conspicuity exponent, the
arterial / delayed timing and independent per-phase jitter. :func:`_place_centers` picks lesion
centres deep enough inside the liver and apart from each other; :func:`_render_lesion` paints
one lesion's compartments (core, rim, scar, capsule, hemangioma fill front, halo) into every
phase and measures its signal for the reports.
"""

from __future__ import annotations

import numpy as np

from medmap.data.sim.common import box_slices, ellipsoid, smooth_noise, soft_step
from medmap.data.sim.liver.specs import (
    ART,
    ARTERIAL_TIMING,
    CONSPICUITY,
    CONTRAST,
    DEL,
    DELAY_TIMING,
    DWI,
    INP,
    NONCONTRAST,
    OUTP,
    PHASE_JITTER,
    PHASES,
    PRE,
    T2,
    VEN,
)


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
    box = box_slices(center, radii.max() * (1.0 + halo_w) + 2.5, size)
    shape = tuple(sl.stop - sl.start for sl in box)
    local_c = center - np.array([sl.start for sl in box])
    soft = 0.6 / rvox + spec["edge"]
    r = ellipsoid(shape, local_c, radii)
    r = r + spec["lob"] * smooth_noise(rng, shape, 1.0) * np.minimum(r, 1.5)
    inside_liver = liver[box]
    w_les = soft_step(1.0 - r, soft) * inside_liver
    mask = (r < 1.0) & inside_liver
    fields = {"r": r}
    w: dict[str, np.ndarray] = {}
    if fl["rim_t"] > 0:
        rim_t = max(fl["rim_t"], 0.9 / rvox)
        w["rim"] = soft_step(r - (1.0 - rim_t), 0.5 / rvox)
    if fl["scar"]:
        rs = r + 0.25 * smooth_noise(rng, shape, 0.8)
        w["scar"] = soft_step(fl["scar_r"] - rs, 0.5 / rvox)
    if fl["capsule"] or fl["double_rim"]:
        cap_t = max(fl["cap_t"], 0.7 / rvox)
        w["cap"] = soft_step(r - (1.0 - cap_t), 0.4 / rvox)
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
            wf = soft_step(r - front + 0.22 * nod, 0.5 / rvox)
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


