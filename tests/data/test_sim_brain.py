"""MedMoM-Sim brain generator: shapes, determinism, anatomy, class signatures, reports."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from medmap.data.sim import brain
from medmap.data.sim.common import SimConfig

SMALL = SimConfig(size=32)
MID = SimConfig(size=48)
CLEAN = replace(MID, noise=0.0, bias_field=0.0, blur_sigma=0.0, misregistration_mm=0.0)


def _case(seed: int, label: str, cfg: SimConfig = SMALL):
    return brain.simulate_case(np.random.default_rng(seed), label, cfg)


@pytest.fixture(scope="module")
def cohort():
    """A few cases per class at 48^3 (with all artefacts), shared by the signature tests."""
    return {lab: [_case(100 + i, lab, MID) for i in range(8)] for lab in ("benign", "malignant")}


@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_volumes_mask_and_spacing(label):
    case = _case(0, label)
    assert case.label == label
    assert tuple(case.volumes) == brain.SEQUENCES == ("T1WI", "T1C", "T2WI", "T2FLAIR")
    for vol in case.volumes.values():
        assert vol.shape == (32, 32, 32) and vol.dtype == np.float32
        assert np.isfinite(vol).all() and vol.min() >= 0 and vol.max() > 0.3
    assert case.mask.shape == (32, 32, 32) and case.mask.dtype == np.uint8
    assert case.mask.sum() > 0 and set(np.unique(case.mask)) <= {0, 1}
    s = brain.HEAD_SIDE_MM / 32
    assert case.spacing == pytest.approx((s, s, s))
    assert case.meta["n_lesions"] == len(case.meta["lesions"]) >= 1


def test_unknown_label_rejected():
    with pytest.raises(ValueError):
        _case(0, "meningioma")


def test_deterministic_for_a_seed():
    a, b = _case(7, "malignant"), _case(7, "malignant")
    for m in brain.SEQUENCES:
        np.testing.assert_array_equal(a.volumes[m], b.volumes[m])
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.reports == b.reports and a.meta == b.meta


def test_seeds_differ_in_anatomy_not_only_noise():
    cfg = replace(SMALL, noise=0.0, bias_field=0.0, blur_sigma=0.0, misregistration_mm=0.0)
    a, b = _case(1, "benign", cfg), _case(2, "benign", cfg)
    assert a.meta["scale"] != b.meta["scale"]
    away = ~ndimage.binary_dilation((a.mask + b.mask) > 0, iterations=3)
    head_a, head_b = a.volumes["T1WI"] > 0.3, b.volumes["T1WI"] > 0.3
    # the deformation moves tissue boundaries: the head outlines differ away from the lesions
    assert (head_a ^ head_b)[away].sum() > 0.01 * head_a.sum()


def test_anatomy_is_ras_mni_shaped():
    anat = brain.anatomy(32)
    idx = np.argwhere(anat.brain > 0.5)
    lo, hi = anat.vox_to_mni(idx.min(0)), anat.vox_to_mni(idx.max(0))
    # MNI brain: x about +-70 (symmetric), y about -105..70, z up to about 80
    assert lo[0] == pytest.approx(-hi[0], abs=10) and 60 < hi[0] < 85
    assert -120 < lo[1] < -95 and 60 < hi[1] < 85
    assert 70 < hi[2] < 95
    gm, wm, csf = (anat.tissue[brain.TISSUES.index(t)] for t in ("gm", "wm", "csf"))
    assert gm.sum() > wm.sum() > 0.2 * gm.sum() and csf.sum() > 0
    assert np.allclose(anat.vox_to_mni(anat.mni_to_vox([10.0, -20.0, 30.0])), [10, -20, 30])


def test_clean_tissue_contrasts():
    case = _case(3, "benign", replace(CLEAN, size=32))
    anat = brain.anatomy(32)
    wm = anat.tissue[brain.TISSUES.index("wm")] > 0.8
    gm = anat.tissue[brain.TISSUES.index("gm")] > 0.7
    v = case.volumes
    assert v["T1WI"][wm].mean() > v["T1WI"][gm].mean()   # T1: WM brighter than GM
    assert v["T2WI"][gm].mean() > v["T2WI"][wm].mean()   # T2: GM brighter than WM
    assert v["T2FLAIR"][gm].mean() > v["T2FLAIR"][wm].mean()


def _shell(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    m = mask > 0
    grown = ndimage.binary_dilation(m, iterations=outer)
    return grown & ~ndimage.binary_dilation(m, iterations=inner)


def test_benign_is_extra_axial_and_malignant_intra_axial(cohort):
    for case in cohort["benign"]:
        les = case.meta["lesions"][0]
        assert les["kind"] == "extra" and les["site"] in ("convexity", "falx", "skull_base")
        assert les["wm_at_centre"] < 0.3
        if les["site"] != "falx":  # falcine ones sit in the interhemispheric fissure
            assert les["depth_mm"] < 20
    for case in cohort["malignant"]:
        for les in case.meta["lesions"]:
            assert les["kind"] == "intra" and les["depth_mm"] > 0  # centre inside the brain
    depth = {lab: np.mean([c.meta["lesions"][0]["depth_mm"] for c in cases])
             for lab, cases in cohort.items()}
    assert depth["malignant"] > depth["benign"]


def test_benign_enhances_on_t1c(cohort):
    gains = []
    for case in cohort["benign"]:
        m = case.mask > 0
        gains.append((case.volumes["T1C"][m] - case.volumes["T1WI"][m]).mean())
    assert min(gains) > 0.05 and np.mean(gains) > 0.2


def test_malignant_has_more_flair_oedema_around_the_lesion(cohort):
    def shell_ratio(case):
        flair = case.volumes["T2FLAIR"]
        brain_median = np.median(flair[brain.anatomy(48).brain > 0.5])
        return flair[_shell(case.mask, 1, 3)].mean() / brain_median

    mal = np.mean([shell_ratio(c) for c in cohort["malignant"]])
    ben = np.mean([shell_ratio(c) for c in cohort["benign"]])
    assert mal > ben + 0.1


def test_necrotic_centre_darker_than_enhancing_rim():
    found = 0
    for seed in range(40):
        case = _case(seed, "malignant", MID)
        les = case.meta["lesions"][0]
        if not les["necrosis"]:
            continue
        lab, _ = ndimage.label(case.mask)
        c = np.round(les["centre_vox"]).astype(int)
        comp = lab == lab[tuple(c)] if lab[tuple(c)] else case.mask > 0
        depth = ndimage.distance_transform_edt(comp)
        t1c = case.volumes["T1C"]
        core = t1c[depth >= depth.max() - 0.5].mean()
        rim = t1c[(depth > 0) & (depth <= 1.5)].mean()
        assert core < rim, (seed, core, rim)
        found += 1
        if found == 3:
            break
    assert found == 3


def test_reports_per_sequence_and_global(cohort):
    size_mm = re.compile(r"\d+(\.\d+)? ?(x \d+ x \d+ )?mm")
    named = 0
    t1c_texts = set()
    cases = cohort["benign"] + cohort["malignant"]
    for case in cases:
        assert set(case.reports) == {*brain.SEQUENCES, "global"}
        for key, text in case.reports.items():
            assert isinstance(text, str) and len(text) > 20, key
            assert size_mm.search(text), (key, text)
        named += bool(re.search(r"meningioma|glioma|glioblastoma|metasta",
                                case.reports["global"], re.I))
        t1c_texts.add(case.reports["T1C"].split(" of the ")[0])
        assert "enhanc" in case.reports["T1C"].lower()
    assert 0.15 * len(cases) <= named <= 0.85 * len(cases)  # diagnosis named about half the time
    assert len(t1c_texts) >= 3                              # varied wording


def test_datasheet_section():
    assert brain.DATASHEET.strip().startswith("## Brain")
    for word in ("MNI152", "T1C", "T2FLAIR", "meningioma", "Overlap"):
        assert word in brain.DATASHEET


def test_driver_uses_the_brain_generator():
    import medmap.data.sim as sim

    cfg = replace(SMALL, p_missing=0.5)
    case = sim.simulate_case("brain", 3, "malignant", cfg, seed=0)
    assert "T1WI" in case.volumes  # the reference sequence is never dropped
    assert set(case.reports) == {*case.volumes, "global"}
    assert set(case.volumes) | set(case.meta.get("missing", [])) == set(brain.SEQUENCES)
