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

The generator is split by idea:

* :mod:`.specs` -- sequences, tissue signals and the overlap knobs :data:`P`;
* :mod:`.template` -- the MNI152 template anatomy on the simulation cube (:func:`anatomy`);
* :mod:`.plan` -- lesion sites and per-lesion parameters (template voxel coordinates);
* :mod:`.lesions` -- painting one lesion (tumour, necrosis, oedema, cleft, dural tail);
* :mod:`.reports` -- the per-sequence reports and the global impression;
* :mod:`.datasheet` -- the brain section of DATASHEET.md (:data:`DATASHEET`);
* this module -- :func:`simulate_case`: subject warp, mass effect, images, artefacts, meta.

Example:
    >>> import numpy as np
    >>> from medmap.data.sim.common import SimConfig
    >>> case = simulate_case(np.random.default_rng(0), "benign", SimConfig(size=48))
    >>> sorted(case.volumes), case.mask.shape
    (['T1C', 'T1WI', 'T2FLAIR', 'T2WI'], (48, 48, 48))
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medmap.data.sim.brain.datasheet import DATASHEET
from medmap.data.sim.brain.lesions import _paint
from medmap.data.sim.brain.plan import _plan_lesions
from medmap.data.sim.brain.reports import _reports
from medmap.data.sim.brain.specs import (
    _CSF,
    _GM,
    _MARROW,
    _SCALP,
    _SIGNAL,
    _WM,
    P,
    SEQUENCES,
    TISSUES,
)
from medmap.data.sim.brain.template import HEAD_SIDE_MM, Anatomy, anatomy
from medmap.data.sim.common import SimCase, SimConfig, apply_artefacts, coarse_field
from medmap.data.vocab import BRAIN

__all__ = ["simulate_case", "DATASHEET", "SEQUENCES", "HEAD_SIDE_MM", "Anatomy", "anatomy"]


def _coarse_field(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """Unit-std smooth random field on the cube (the brain's settings of
    :func:`~medmap.data.sim.common.coarse_field`: Gaussian upsampling of an n^3 lattice)."""
    return coarse_field(rng, size, n, 0.8, "gaussian", last_axis_second=True, standardise=True)


def simulate_case(rng: np.random.Generator, label: str, cfg: SimConfig) -> SimCase:
    """One brain study: 4 sequences on a warped MNI152 head, lesion mask, per-sequence reports."""
    BRAIN.class_index(label)
    S = int(cfg.size)
    anat = anatomy(S)
    s = anat.spacing

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

    # ---- lesion plan (template voxels), then anchored in the output grid
    subtype, lesions = _plan_lesions(rng, label, anat, cfg.lesion_radius_mm)
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

