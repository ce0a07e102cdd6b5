"""LLD-MMRI imported from the release as downloaded.

The fixtures follow the official documentation, LMMMEng/LLD-MMRI2023 ``main/README.md``
("Data Preparation"): the release folder holds ``images/MR-x/<studyUID>/<seriesUID>.nii.gz``
(eight whole phase volumes per patient), ``labels/Annotation.json`` (per phase: studyUID,
seriesUID, and per lesion a category and a ``bbox.3D_box``) and ``classification_dataset/
{images/MR-x/<phase>.nii.gz, labels/labels.txt, labels_val_inaccessible.txt, train_fold*.txt,
val_fold*.txt}``. A second lesion's crop is ``MR-x_1`` (``main/preprocess/crop_roi.py``). The
test-set archive unpacks to ``lldmmri_test_set/`` with ``labels/Annotation_test.json`` and
``classification_dataset/labels/labels_test_inaccessible.txt``.
"""

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmap.data.io import read_volume
from medmap.data.manifest import Manifest, ManifestError
from medmap.data.sources.lld_mmri import (
    LLDLayoutWarning,
    LLDMissingPhaseWarning,
    import_lld_mmri,
)
from medmap.data.vocab import LIVER

PHASES = ("T2WI", "DWI", "In Phase", "Out Phase", "C-pre", "C+A", "C+V", "C+Delay")
# whole-volume grids differ between sequences, as in the release
SHAPES = {"T2WI": (12, 12, 6), "DWI": (10, 10, 5), "In Phase": (14, 14, 7),
          "Out Phase": (14, 14, 7)}
_RNG = np.random.default_rng(7)


def _nii(path: Path, shape=(8, 8, 6), affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag([-0.8, -0.8, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(_RNG.random(shape).astype(np.float32), aff), str(path))
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _box(x0, y0, z0, x1, y1, z1):
    return {"x_min": x0, "y_min": y0, "z_min": z0, "x_max": x1, "y_max": y1, "z_max": z1}


def make_release(root: Path, patients: dict, annotation="Annotation.json",
                 crop_labels: dict | None = None, crops: bool = True) -> Path:
    """``patients``: id -> list of (category, 3D box) per lesion. Writes the full volumes, the
    annotation file, and (``crops``) classification_dataset with its crops and label files."""
    info = {}
    for pid, lesions in patients.items():
        items = []
        for n, ph in enumerate(PHASES):
            study, series = f"1.2.840.{abs(hash(pid)) % 997}.1", f"1.2.840.{n}.{len(pid)}.7"
            _nii(root / "images" / pid / study / f"{series}.nii.gz", SHAPES.get(ph, (16, 16, 8)))
            items.append({
                "studyUID": study, "seriesUID": series, "phase": ph,
                "pixel_spacing": [0.8, 0.8], "slice_thickness": 3.0,
                "annotation": {"num_targets": len(lesions), "lesion": {
                    str(k): {"category": cat, "bbox": {"2D_box": [], "3D_box": box}}
                    for k, (cat, box) in enumerate(lesions)}},
            })
        info[pid] = items
        if crops:
            for k in range(len(lesions)):
                cid = pid if k == 0 else f"{pid}_{k}"
                for ph in PHASES:
                    _nii(root / "classification_dataset" / "images" / cid / f"{ph}.nii.gz")
    _write(root / "labels" / annotation, json.dumps({
        "Annotation_info": info,
        "Category_info": {"Hepatic_hemangioma": 0, "Intrahepatic_cholangiocarcinoma": 1,
                          "Hepatic_abscess": 2, "Hepatic_metastasis": 3, "Hepatic_cyst": 4,
                          "FOCAL_NODULAR_HYPERPLASIA": 5, "Hepatocellular_carcinoma": 6,
                          "Inaccessible": -1}}))
    for name, text in (crop_labels or {}).items():
        _write(root / "classification_dataset" / "labels" / name, text)
    return root


@pytest.fixture()
def release(tmp_path):
    """The training/validation release ``data/`` as unpacked (README layout)."""
    return make_release(
        tmp_path / "data",
        {"MR745": [(6, _box(2, 3, 1, 6, 7, 3)), (3, _box(9, 9, 4, 12, 11, 5))],
         "MR7451": [(0, _box(4, 4, 2, 8, 9, 4))],
         "MR1872": [(-1, _box(1, 1, 0, 3, 3, 1))]},
        crop_labels={
            "labels.txt": "MR745 6\nMR745_1 3\nMR7451 0\n",
            "labels_val_inaccessible.txt": "MR1872 -1\n",
            "train_fold1.txt": "MR745 6\nMR7451 0\n",
            "val_fold1.txt": "MR745_1 3\n",
        })


def test_release_root_uses_classification_dataset_and_says_so(release):
    """Before: 'no label file found in data/labels' (images/ was taken for the crops)."""
    with pytest.warns(LLDLayoutWarning, match=r"holds both the full volumes.*using .*"
                                              r"classification_dataset"):
        m = import_lld_mmri(release, fold=1)
    assert m.root == release / "classification_dataset"
    assert [(c.case_id, c.split, c.label) for c in m] == [
        ("MR745", "train", "hepatocellular_carcinoma"),
        ("MR7451", "train", "hepatic_hemangioma"),
        ("MR745_1", "val", "hepatic_metastasis")]
    by = {c.case_id: c for c in m}
    assert set(by) == {"MR745", "MR7451", "MR745_1"}
    assert by["MR745_1"].modalities["C+A"].endswith("MR745_1/C+A.nii.gz")
    assert by["MR7451"].modalities["C+A"].endswith("MR7451/C+A.nii.gz")
    with pytest.warns(LLDLayoutWarning):
        m2 = import_lld_mmri(release)  # no fold: labels.txt -> train, the val list -> val
    assert {c.case_id: c.split for c in m2} == {"MR745": "train", "MR745_1": "train",
                                                 "MR7451": "train", "MR1872": "val"}


def test_underscore_keys_stay_distinct(release):
    """Before: "case 'MR7451': listed twice" (the key dropped '_', so MR745_1 == MR7451)."""
    crop = release / "classification_dataset"
    m = import_lld_mmri(crop, labels_file=crop / "labels" / "labels.txt")
    assert {c.case_id: c.label for c in m} == {
        "MR745": "hepatocellular_carcinoma", "MR745_1": "hepatic_metastasis",
        "MR7451": "hepatic_hemangioma", "MR1872": None}
    # the dash still does not count
    _write(crop / "labels" / "val_fold1.txt", "MR-745_1 3\n")
    assert {c.case_id: c.split for c in import_lld_mmri(crop, fold=1)}["MR745_1"] == "val"


def test_test_archive_folder(tmp_path):
    """``lldmmri_test_set/`` as unpacked. Before: 'no label file found' (its full-volume
    images/ was taken for the crops)."""
    arch = make_release(tmp_path / "lldmmri_test_set",
                        {"MR1872": [(-1, _box(1, 1, 0, 3, 3, 1))],
                         "MR11656": [(-1, _box(2, 2, 1, 5, 5, 2))]},
                        annotation="Annotation_test.json",
                        crop_labels={"labels_test_inaccessible.txt": "MR1872 -1\nMR11656 -1\n"})
    with pytest.warns(LLDLayoutWarning, match="using"):
        m = import_lld_mmri(arch)
    assert [(c.case_id, c.split, c.label) for c in m] == [("MR1872", "test", None),
                                                          ("MR11656", "test", None)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mf = import_lld_mmri(arch, full_volumes=True, mask_dir=tmp_path / "masks")
    assert [(c.case_id, c.split) for c in mf] == [("MR1872", "test"), ("MR11656", "test")]
    assert all("lesion" in c.masks for c in mf)


def _mask(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_full_volumes_with_lesion_box_masks(release, tmp_path):
    masks = tmp_path / "masks"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every phase exists and every box fits
        m = import_lld_mmri(release, fold=1, full_volumes=True, mask_dir=masks)
    assert m.root == release
    by = {c.case_id: c for c in m}
    assert list(by) == ["MR745", "MR7451", "MR745_1"]
    assert [c.split for c in m] == ["train", "train", "val"]
    assert by["MR745"].label == "hepatocellular_carcinoma"
    c = by["MR745"]
    assert tuple(c.modalities) == LIVER.modalities
    assert "/images/MR745/" in c.modalities["C+A"] and c.modalities["InPhase"].endswith(".nii.gz")
    assert set(c.masks) == {"lesion", *LIVER.modalities}
    assert c.masks["lesion"] == c.masks["C+A"]
    # the box, in each phase's own grid: x_min <= x < x_max, y_min <= y < y_max, z_min..z_max
    ca = _mask(c.masks["C+A"])
    assert ca.shape == (16, 16, 8) and ca.dtype == np.uint8
    expect = np.zeros((16, 16, 8), np.uint8)
    expect[2:6, 3:7, 1:4] = 1
    assert np.array_equal(ca, expect)
    dwi = _mask(c.masks["DWI"])
    assert dwi.shape == (10, 10, 5)
    second = _mask(by["MR745_1"].masks["lesion"])
    assert second.sum() == 3 * 2 * 2 and second[9:12, 9:11, 4:6].all()
    # mask and image share the grid (read back through medmap's reader)
    v, mk = read_volume(c.modalities["T2WI"]), read_volume(c.masks["T2WI"])
    assert v.array.shape == mk.array.shape and np.allclose(v.affine, mk.affine)
    back = Manifest.load(m.save(tmp_path / "lld_full.jsonl"))
    assert [x.to_json() for x in back] == [x.to_json() for x in m]


def test_full_volumes_without_crops_and_bad_boxes(tmp_path):
    rel = make_release(tmp_path / "LLD", {
        "MR-2001": [(2, _box(1, 1, 1, 4, 4, 2))],
        "MR-2002": [(5, _box(1, 1, 30, 4, 4, 33))],   # beyond the slices of every phase
    }, crops=False)
    with pytest.raises(ManifestError, match=r"holds full volumes .*--full-volumes"):
        import_lld_mmri(rel)
    with pytest.raises(ValueError, match="needs mask_dir"):
        import_lld_mmri(rel, full_volumes=True)
    with pytest.warns(LLDLayoutWarning) as rec:
        m = import_lld_mmri(rel / "images", full_volumes=True, mask_dir=tmp_path / "mk")
    text = " ".join(str(w.message) for w in rec)
    assert "all 2 annotated lesions go to split 'train'" in text
    assert "MR-2002: no lesion mask for T2WI: box" in text and "outside the (12, 12, 6)" in text
    by = {c.case_id: c for c in m}
    assert (by["MR-2001"].split, by["MR-2001"].label) == ("train", "hepatic_abscess")
    assert by["MR-2002"].label == "focal_nodular_hyperplasia" and by["MR-2002"].masks == {}
    # a phase file missing from images/: the case keeps seven phases
    next(p for p in (rel / "images" / "MR-2001").rglob("*.nii.gz")
         if p.name.startswith("1.2.840.0.")).unlink()                      # its T2WI
    with pytest.warns(LLDMissingPhaseWarning, match=r"MR-2001 \(no T2WI\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LLDLayoutWarning)
            m = import_lld_mmri(rel, full_volumes=True, mask_dir=tmp_path / "mk")
    assert "T2WI" not in m.cases[0].modalities and "T2WI" not in m.cases[0].masks


def test_full_volumes_annotation_errors(release, tmp_path):
    ann = release / "labels" / "Annotation.json"
    obj = json.loads(ann.read_text())
    obj["Annotation_info"]["MR7451"][0]["phase"] = "Arterial"
    obj["Annotation_info"]["MR745"][1]["annotation"]["lesion"]["0"]["category"] = 9
    ann.write_text(json.dumps(obj))
    _write(release / "classification_dataset" / "labels" / "val_fold1.txt", "MR745_1 3\nMR999 1\n")
    with pytest.raises(ManifestError) as e:
        import_lld_mmri(release, fold=1, full_volumes=True, mask_dir=tmp_path / "m")
    msg = str(e.value)
    assert "patient 'MR7451' item 0: unknown phase 'Arterial'" in msg
    assert "patient 'MR745' lesion 0: category 9 outside 0..6" in msg
    assert "case 'MR999'" in msg and "not in" in msg and "Annotation" in msg


def test_cli_release_root_and_full_volumes(release, tmp_path, capsys):
    from medmap.cli import main

    out = tmp_path / "out" / "lld.jsonl"
    assert main(["data", "import-lld-mmri", str(release), "--fold", "1", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "wrote 3 cases" in cap.out
    assert "warning:" in cap.err and "classification_dataset" in cap.err
    assert main(["data", "import-lld-mmri", str(release), "--fold", "1", "--full-volumes",
                 "--out", str(out)]) == 0
    cap = capsys.readouterr()
    masks = tmp_path / "out" / "lld_masks"
    assert f"lesion masks in {masks}" in cap.out
    assert (masks / "MR745_1" / "C+A_lesion.nii.gz").is_file()
    assert Manifest.load(out).cases[0].masks["lesion"].startswith(str(masks))
    assert main(["data", "import-lld-mmri", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
