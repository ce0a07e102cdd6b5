"""The radiomics baseline: regions, tissue-referenced IBSI features on a case whose values are
known, imputation of a missing sequence, the fitted model on a separable toy set, errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medmap.baselines.radiomics import (RadiomicsConfig, case_features, region_masks,
                                        run_radiomics, sequence_features)
from medmap.data.manifest import Case, ManifestError


def _cube(n: int = 16, lo: int = 5, hi: int = 11) -> np.ndarray:
    m = np.zeros((n, n, n), bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_regions_of_a_cube():
    r = region_masks(_cube(), RadiomicsConfig(shell_voxels=2))
    assert r["whole"].sum() == 216 and r["core"].sum() == 64 and r["rim"].sum() == 152
    assert not (r["shell"] & r["whole"]).any()
    # the shell is the 2-voxel dilation (6-connected) minus the lesion, next to the lesion
    assert r["shell"].sum() > 0 and r["shell"][4, 8, 8] and r["shell"][3, 8, 8]
    assert not r["shell"][2, 8, 8]


def test_box_region_fills_the_bounding_box():
    m = np.zeros((12, 12, 12), bool)
    m[3, 3, 3] = m[8, 7, 6] = True                 # two voxels: box 6 x 5 x 4
    r = region_masks(m, RadiomicsConfig(region="box"))
    assert r["whole"].sum() == 6 * 5 * 4


def test_features_are_tissue_referenced_and_known():
    """Tissue 100, lesion core 400 and rim 200: after division by the shell's mean the
    features read 4 (core), 2 (rim) and their voxel-weighted mean (whole)."""
    lesion = _cube()
    img = np.full(lesion.shape, 100.0, np.float32)
    img[lesion] = 200.0
    img[6:10, 6:10, 6:10] = 400.0                   # the 4^3 core of the 6^3 lesion
    f = sequence_features(img, lesion, (2.0, 2.0, 2.0))
    assert f["core:stat_mean"] == pytest.approx(4.0)
    assert f["rim:stat_mean"] == pytest.approx(2.0)
    assert f["whole:stat_mean"] == pytest.approx((64 * 4 + 152 * 2) / 216)
    assert f["core:stat_var"] == pytest.approx(0.0, abs=1e-9)
    assert f["whole:stat_max"] == pytest.approx(4.0) and f["whole:stat_min"] == pytest.approx(2.0)
    # the same case scanned with another gain gives the same features
    g = sequence_features(img * 7.5, lesion, (2.0, 2.0, 2.0))
    assert g["whole:stat_mean"] == pytest.approx(f["whole:stat_mean"], rel=1e-5)
    # without the reference the raw signal comes through
    raw = sequence_features(img, lesion, (2.0, 2.0, 2.0), RadiomicsConfig(normalise="none"))
    assert raw["core:stat_mean"] == pytest.approx(400.0)


def test_cropping_to_the_lesion_keeps_every_feature(monkeypatch):
    """First-order features are computed on the lesion's bounding box: the same values as on
    the whole image (a noisy image, an off-centre lesion)."""
    import medmap.baselines.radiomics as R

    rng = np.random.default_rng(0)
    img = rng.normal(100, 20, (24, 24, 24)).astype(np.float32)
    lesion = _cube(24, 3, 10)
    img[lesion] += 80
    cropped = sequence_features(img, lesion, (1.5, 1.5, 2.0))
    monkeypatch.setattr(R, "_crop_to_masks", lambda image, masks, margin=1: (image, masks))
    whole = sequence_features(img, lesion, (1.5, 1.5, 2.0))
    assert cropped.keys() == whole.keys() and len(whole) > 40
    assert all(cropped[k] == whole[k] or (np.isnan(cropped[k]) and np.isnan(whole[k]))
               for k in whole)


def _write_case(root, cid, split, label, brightness, modalities=("T2WI", "C+A"), mask=True):
    d = root / cid
    d.mkdir(parents=True)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    lesion = _cube()
    paths = {}
    for k, mod in enumerate(modalities):
        img = np.full(lesion.shape, 100.0, np.float32)
        img[lesion] = 100.0 * brightness * (1 + 0.5 * k)
        nib.save(nib.Nifti1Image(img, aff), d / f"{mod}.nii.gz")
        paths[mod] = str(d / f"{mod}.nii.gz")
    masks = {}
    if mask:
        nib.save(nib.Nifti1Image(lesion.astype(np.uint8), aff), d / "lesion.nii.gz")
        masks["lesion"] = str(d / "lesion.nii.gz")
    return Case(cid, "brain", split, label, paths, {}, masks)


def test_missing_sequence_gives_missing_features(tmp_path):
    c = _write_case(tmp_path, "c0", "train", "benign", 2.0, modalities=("T2WI",))
    f = case_features(c, ["T2WI", "C+A"])
    assert any(k.startswith("T2WI:whole:") for k in f)
    assert not any(k.startswith("C+A:") for k in f)


def test_missing_mask_names_case_and_field(tmp_path):
    c = _write_case(tmp_path, "nomask", "train", "benign", 2.0, mask=False)
    with pytest.raises(ManifestError, match=r"case 'nomask': masks.lesion: missing"):
        case_features(c, ["T2WI"])


def test_baseline_separates_a_separable_set_and_writes_results(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(24):
        label = "malignant" if i % 2 else "benign"
        bright = (3.0 if label == "malignant" else 1.5) + rng.uniform(-0.2, 0.2)
        split = "test" if i >= 16 else ("val" if i >= 14 else "train")
        mods = ("T2WI",) if i == 3 else ("T2WI", "C+A")          # one case misses C+A
        c = _write_case(tmp_path / "data", f"c{i:02d}", split, label, bright, mods)
        lines.append(json.dumps({"case_id": c.case_id, "organ": "brain", "split": split,
                                 "label": label, "modalities": c.modalities,
                                 "masks": c.masks}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    doc = run_radiomics(manifest, "brain", tmp_path / "out", n_boot=50, workers=1)
    m = doc["metrics"]
    assert m["n"] == 8 and doc["n_train"] == 16
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0
    assert m["ci"]["accuracy"][0] is not None
    saved = json.loads((tmp_path / "out" / "radiomics.json").read_text())
    assert saved["metrics"]["accuracy"] == 1.0 and saved["C"] in RadiomicsConfig().Cs
    header = (tmp_path / "out" / "features.csv").read_text().splitlines()[0]
    assert header.startswith("case_id,split,label,T2WI:")


def test_a_small_feature_job_stays_in_this_process(tmp_path, monkeypatch):
    """Fewer cases than MIN_CASES_PER_WORKER per core: no worker pool is started (spawning one
    cost more than the cases, measured), and the features equal the one-process ones."""
    import medmap.baselines.radiomics as R

    cases = [_write_case(tmp_path, f"c{i}", "train", "benign", 2.0 + i) for i in range(3)]

    class NoPool:
        def __init__(self, *a, **kw):
            raise AssertionError("a process pool was started for 3 cases")

    monkeypatch.setattr(R, "ProcessPoolExecutor", NoPool)
    X, names = R.extract_features(cases, ["T2WI"])
    X1, names1 = R.extract_features(cases, ["T2WI"], workers=1)
    assert names == names1 and X.shape == (3, len(names)) and np.array_equal(X, X1)
    assert R.MIN_CASES_PER_WORKER > 3


def test_features_run_in_a_shared_pool(tmp_path, monkeypatch):
    """``extract_features(pool=...)`` runs its cases in the given pool (shared by the demo's
    jobs, so its workers start once) with the same features."""
    import medmap.baselines.radiomics as R

    cases = [_write_case(tmp_path, f"c{i}", "train", "benign", 2.0 + i) for i in range(3)]

    class InlinePool:
        jobs = 0

        def map(self, fn, items, chunksize=1):
            items = list(items)
            InlinePool.jobs += len(items)
            return map(fn, items)

    monkeypatch.setattr(R, "ProcessPoolExecutor", None)          # no pool of its own
    X, names = R.extract_features(cases, ["T2WI"], workers=2, pool=InlinePool())
    X1, names1 = R.extract_features(cases, ["T2WI"], workers=1)
    assert InlinePool.jobs == 3 and names == names1 and np.array_equal(X, X1)
