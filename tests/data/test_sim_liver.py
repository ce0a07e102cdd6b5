"""Tests of the liver generator of MedMoM-Sim (medmap.data.sim.liver)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medmap.data.sim import liver
from medmap.data.sim.common import SimConfig
from medmap.data.vocab import LIVER

SIZE = 32
CFG = SimConfig(size=SIZE)
# artefact-free config for signature checks (no noise, blur, bias or misregistration)
CLEAN = replace(CFG, noise=0.0, bias_field=0.0, blur_sigma=0.0, misregistration_mm=0.0)


def _case(label: str, seed: int, cfg: SimConfig = CFG):
    return liver.simulate_case(np.random.default_rng(seed), label, cfg)


@pytest.fixture(scope="module")
def one_per_class():
    return {label: _case(label, i) for i, label in enumerate(LIVER.classes)}


def test_deterministic_for_a_seed():
    a, b = _case("hepatocellular_carcinoma", 7), _case("hepatocellular_carcinoma", 7)
    for m in LIVER.modalities:
        np.testing.assert_array_equal(a.volumes[m], b.volumes[m])
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.reports == b.reports and a.meta == b.meta


def test_different_seeds_differ():
    a, b = _case("hepatic_cyst", 1), _case("hepatic_cyst", 2)
    assert not np.array_equal(a.volumes["T2WI"], b.volumes["T2WI"])
    assert a.reports != b.reports or not np.array_equal(a.mask, b.mask)


def test_every_class_has_all_phases_and_a_lesion_in_the_liver(one_per_class):
    for label, case in one_per_class.items():
        assert case.label == label
        assert set(case.volumes) == set(LIVER.modalities)
        for m, v in case.volumes.items():
            assert v.shape == (SIZE,) * 3 and v.dtype == np.float32, (label, m)
            assert np.isfinite(v).all(), (label, m)
            assert 0.0 <= float(np.median(v)) and float(np.percentile(v, 99)) < 3.0, (label, m)
        assert case.mask.shape == (SIZE,) * 3 and case.mask.dtype == np.uint8
        assert case.mask.sum() > 0, label
        assert case.meta["lesion_in_liver"] >= 0.99, label
        organ = case.organ_mask
        assert organ.shape == case.mask.shape and organ.dtype == np.uint8
        assert (organ[case.mask > 0] == 1).all(), label          # the liver holds its lesions
        assert 0.01 < organ.mean() < 0.15, label                   # an organ, not the body
        assert case.meta["n_lesions"] == len(case.meta["radii_mm"]) >= 1
        lo, hi = CFG.lesion_radius_mm
        assert all(0.5 * lo <= r <= hi for r in case.meta["radii_mm"]), label
        assert case.spacing == (CFG.spacing_mm,) * 3
        json.dumps(case.meta)  # generator facts stay JSON-serialisable


def test_unknown_label_is_rejected():
    with pytest.raises(ValueError, match="hepatic_cyst"):
        _case("meningioma", 0)


def _lesion_and_liver(case, phase):
    """Mean lesion signal and mean signal of a liver shell around it (clean volumes)."""
    from scipy import ndimage

    m = case.mask > 0
    shell = ndimage.binary_dilation(m, iterations=3) & ~ndimage.binary_dilation(m, iterations=1)
    return float(case.volumes[phase][m].mean()), float(np.median(case.volumes[phase][shell]))


def _mean_over(label, n, fn, size=SIZE):
    cfg = replace(CLEAN, size=size)
    return float(np.mean([fn(_case(label, 100 + s, cfg)) for s in range(n)]))


def test_cyst_is_t2_bright_and_does_not_enhance_while_fnh_does():
    def t2_contrast(c):
        les, liv = _lesion_and_liver(c, "T2WI")
        return les / liv

    def arterial_enhancement(c):
        m = c.mask > 0
        return float(c.volumes["C+A"][m].mean() - c.volumes["C-pre"][m].mean())

    assert _mean_over("hepatic_cyst", 4, t2_contrast) > 1.5
    cyst = _mean_over("hepatic_cyst", 4, arterial_enhancement)
    fnh = _mean_over("focal_nodular_hyperplasia", 4, arterial_enhancement)
    assert abs(cyst) < 0.05 < 0.25 < fnh


def test_hcc_with_fat_drops_on_out_phase():
    drops = []
    for s in range(12):
        c = _case("hepatocellular_carcinoma", 200 + s, CLEAN)
        if c.meta["lesion_fat"]:
            m = c.mask > 0
            drops.append(c.volumes["OutPhase"][m].mean() / c.volumes["InPhase"][m].mean())
    assert drops and max(drops) < 0.9


def test_hcc_washes_out_and_hemangioma_fills_in():
    def delayed_ratio(c):
        les, liv = _lesion_and_liver(c, "C+Delay")
        return les / liv

    hcc = _mean_over("hepatocellular_carcinoma", 6, delayed_ratio, size=48)
    hem = _mean_over("hepatic_hemangioma", 6, delayed_ratio, size=48)
    assert hcc < 0.95 and hem > hcc + 0.05


def test_metastasis_has_more_lesions_on_average():
    def count(label):
        return np.mean([_case(label, 300 + s).meta["n_lesions"] for s in range(10)])

    assert count("hepatic_metastasis") > count("focal_nodular_hyperplasia") + 0.5


def test_reports_one_per_phase_with_size(one_per_class):
    for label, case in one_per_class.items():
        assert set(case.reports) == set(LIVER.modalities) | {"global"}, label
        for key, text in case.reports.items():
            assert isinstance(text, str) and len(text) > 20, (label, key)
            assert re.search(r"\b\d+ mm\b", text), (label, key, text)
        assert "segment" in case.reports["T2WI"]


def test_reports_match_the_image():
    c = _case("hepatic_cyst", 3, CLEAN)
    assert "hyperintense" in c.reports["T2WI"] or "bright" in c.reports["T2WI"]
    for ph in ("C+A", "C+V", "C+Delay"):
        assert "enhanc" in c.reports[ph] and re.search(r"\bno\b|not|non-", c.reports[ph]), c.reports[ph]
    d = int(re.search(r"(\d+) mm", c.reports["T2WI"]).group(1))
    assert d == round(2 * c.meta["radii_mm"][0])


def _stem(description: str) -> str:
    head, last = description.rsplit(" ", 1)
    return f"{head} {last[:6]}"  # "hepatic metast" matches metastasis and metastases


def test_global_impression_names_the_diagnosis_only_sometimes():
    named, modes = [], set()
    for s in range(21):
        label = LIVER.classes[s % len(LIVER.classes)]
        case = _case(label, 400 + s)
        text = case.reports["global"].lower()
        desc = LIVER.class_descriptions[LIVER.class_index(label)]
        named.append(_stem(desc) in text)
        modes.add(case.meta["impression"])
        if case.meta["impression"] == "descriptive":
            assert not any(_stem(d) in text for d in LIVER.class_descriptions), text
    assert 0 < sum(named) < len(named)
    assert "descriptive" in modes and "diagnosis" in modes


def test_driver_end_to_end(tmp_path):
    nib = pytest.importorskip("nibabel")
    from medmap.data.sim import simulate

    manifest = simulate(tmp_path, cases=7, size=32, seed=0, organs=("liver",), workers=1)
    cases = list(manifest)
    assert len(cases) == 7
    assert sorted(c.label for c in cases) == sorted(LIVER.classes)
    lines = (tmp_path / "manifest.jsonl").read_text().strip().splitlines()
    assert len(lines) == 7
    first = cases[0]
    for m, rel in first.modalities.items():
        img = nib.load(str(tmp_path / rel))
        assert img.shape == (32, 32, 32)
        assert np.isfinite(np.asarray(img.dataobj)).all()
    mask = nib.load(str(tmp_path / first.masks["lesion"]))
    assert np.asarray(mask.dataobj).sum() > 0
    liver = np.asarray(nib.load(str(tmp_path / first.masks["liver"])).dataobj)
    assert liver.shape == (32, 32, 32) and (liver[np.asarray(mask.dataobj) > 0] == 1).all()
    assert "## Liver" in (tmp_path / "DATASHEET.md").read_text()


def test_the_worker_count_does_not_change_the_simulated_data(tmp_path):
    """``simulate`` promises the same benchmark for a seed whatever its ``workers``: every file
    and the manifest are byte-identical with one process and with two."""
    from medmap.data.sim import simulate

    for w in (1, 2):
        simulate(tmp_path / f"w{w}", cases=4, size=24, seed=3, organs=("liver",), workers=w)
    files = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").rglob("*")
                   if p.is_file())
    assert any(str(f).endswith("mask.nii.gz") for f in files)       # masks gzipped
    assert any(str(f).endswith("T2WI.nii") for f in files)          # volumes not
    assert files == sorted(p.relative_to(tmp_path / "w2") for p in (tmp_path / "w2").rglob("*")
                           if p.is_file())
    for f in files:
        a, b = (tmp_path / "w1" / f).read_bytes(), (tmp_path / "w2" / f).read_bytes()
        if f.suffix == ".gz":          # gzip headers hold a timestamp: compare the contents
            import gzip

            a, b = gzip.decompress(a), gzip.decompress(b)
        assert a == b, f


def test_compressed_volumes_hold_the_same_voxels(tmp_path):
    """``compress=True`` writes the sequences as .nii.gz; the data is the same voxel for voxel."""
    import nibabel as nib
    import numpy as np

    from medmap.data.manifest import Manifest
    from medmap.data.sim import simulate

    plain = simulate(tmp_path / "nii", cases=2, size=24, seed=4, organs=("liver",), workers=1)
    gz = simulate(tmp_path / "gz", cases=2, size=24, seed=4, organs=("liver",), workers=1,
                  compress=True)
    for a, b in zip(Manifest.load(tmp_path / "nii" / "manifest.jsonl").resolved(),
                    Manifest.load(tmp_path / "gz" / "manifest.jsonl").resolved()):
        assert a.modalities.keys() == b.modalities.keys()
        assert all(v.endswith(".nii.gz") for v in [*a.masks.values(), *b.masks.values()])
        for m in a.modalities:
            assert a.modalities[m].endswith(".nii") and b.modalities[m].endswith(".nii.gz")
            assert np.array_equal(np.asarray(nib.load(a.modalities[m]).dataobj),
                                  np.asarray(nib.load(b.modalities[m]).dataobj))
    assert len(plain) == len(gz) == 2


def test_cli_simulate_writes_plain_volumes_and_gzipped_ones_when_asked(tmp_path, capsys):
    from medmap.cli import main
    from medmap.data.manifest import Manifest

    for flag, ext in (([], ".nii"), (["--compress"], ".nii.gz")):
        out = tmp_path / (ext.strip(".") or "x")
        assert main(["data", "simulate", "--out", str(out), "--cases", "1", "--size", "24",
                     "--organs", "liver", "--workers", "1", *flag]) == 0
        (case,) = Manifest.load(out / "manifest.jsonl").resolved()
        assert case.modalities and all(p.endswith(ext) and Path(p).is_file()
                                       for p in case.modalities.values())
        assert case.masks["lesion"].endswith("lesion_mask.nii.gz")
    assert "wrote 1 cases" in capsys.readouterr().out
