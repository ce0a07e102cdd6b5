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

The generator is split by idea:

* :mod:`.specs` -- phases, tissue signals, the lesion-class specifications
  (:data:`CLASS_SPECS`) and the per-case randomness constants;
* :mod:`.anatomy` -- the abdomen and liver label volume, Couinaud segments;
* :mod:`.lesions` -- per-case lesion appearance, placement and rendering;
* :mod:`.reports` -- the per-sequence reports and the global impression;
* :mod:`.datasheet` -- the liver section of DATASHEET.md (:data:`DATASHEET`);
* this module -- :func:`simulate_case`, which draws one study from those pieces.

Example:
    >>> import numpy as np
    >>> from medmap.data.sim.common import SimConfig
    >>> case = simulate_case(np.random.default_rng(0), "hepatic_cyst", SimConfig(size=32))
    >>> sorted(case.volumes) == sorted(PHASES) and bool(case.mask.any())
    True
"""

from __future__ import annotations

import numpy as np

from medmap.data.sim.common import SimCase, SimConfig, apply_artefacts, smooth_noise
from medmap.data.sim.liver.anatomy import _anatomy, _paint_tube, _segment
from medmap.data.sim.liver.datasheet import DATASHEET
from medmap.data.sim.liver.lesions import _draw_look, _place_centers, _render_lesion
from medmap.data.sim.liver.reports import _reports
from medmap.data.sim.liver.specs import (
    _SIGNAL,
    _TEXTURE,
    AORTA,
    CLASS_SPECS,
    CONSPICUITY,
    CONTRAST,
    DEL,
    FLUID,
    INP,
    LIV,
    OUTP,
    PHASES,
    PRE,
    T2,
    TISSUE_JITTER,
)
from medmap.data.vocab import LIVER

__all__ = ["simulate_case", "DATASHEET", "PHASES", "CLASS_SPECS"]


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
