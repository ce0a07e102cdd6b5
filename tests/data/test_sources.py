"""Dataset importers (LLD-MMRI, RadGenome-Brain) on tiny fixtures: the variants the importers
accept beyond the official releases (folders without dashes, flat files, images inside the
release folders, ...). The layouts exactly as released are in ``test_sources_lld.py`` and
``test_sources_radgenome.py``."""

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmap.data.manifest import Manifest, ManifestError
from medmap.data.sources.lld_mmri import (
    LLD_BENIGN_MALIGNANT,
    LLDMissingPhaseWarning,
    import_lld_mmri,
)
from medmap.data.sources.radgenome import (
    RADGENOME_SUBSET_LABELS,
    RadGenomeWarning,
    import_radgenome,
)
from medmap.data.vocab import LIVER

LLD_PHASES = ("T2WI", "DWI", "In Phase", "Out Phase", "C-pre", "C+A", "C+V", "C+Delay")
_RNG = np.random.default_rng(0)


def _nii(path: Path, mask: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((8, 8, 6), np.uint8) if mask else _RNG.random((8, 8, 6)).astype(np.float32)
    if mask:
        arr[2:4, 2:4, 1:3] = 1
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def _lines(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


# ---- LLD-MMRI ---------------------------------------------------------------------------------
def _lld_case(images: Path, cid: str, phases=LLD_PHASES) -> None:
    for ph in phases:
        _nii(images / cid / f"{ph}.nii.gz")


@pytest.fixture()
def lld(tmp_path):
    """data/classification_dataset with 4 cases, fold-1 files and the official test list."""
    base = tmp_path / "data" / "classification_dataset"
    images = base / "images"
    _lld_case(images, "MR-10001")
    _lld_case(images, "MR-10002")
    _lld_case(images, "MR-10003", phases=LLD_PHASES[:-1])  # no C+Delay
    _lld_case(images, "MR-10004")
    (images / "MR-10001" / "notes.json").write_text("{}")  # non-NIfTI files are ignored
    labels = base / "labels"
    _lines(labels / "labels.txt", "MR-10001 0\nMR-10002 6\nMR-10003 3\n")
    _lines(labels / "train_fold1.txt", "MR-10001 0\nMR10002 6\n")  # id without the dash
    _lines(labels / "val_fold1.txt", "MR-10003 3\n")
    _lines(labels / "labels_test_inaccessible.txt", "MR-10004 -1\n")
    return base


def test_lld_fold_import(lld):
    with pytest.warns(LLDMissingPhaseWarning, match=r"MR-10003 \(no C\+Delay\)"):
        m = import_lld_mmri(lld.parent, fold=1)  # the parent of classification_dataset works
    by = {c.case_id: c for c in m}
    assert list(by) == ["MR-10001", "MR-10002", "MR-10003", "MR-10004"]
    assert [by[c].split for c in by] == ["train", "train", "val", "test"]
    assert by["MR-10001"].label == "hepatic_hemangioma"
    assert by["MR-10002"].label == "hepatocellular_carcinoma"  # listed as MR10002
    assert by["MR-10003"].label == "hepatic_metastasis"
    assert by["MR-10004"].label is None  # -1: unlabelled
    assert tuple(by["MR-10001"].modalities) == LIVER.modalities  # "In Phase" -> "InPhase"
    assert by["MR-10001"].modalities["InPhase"].endswith("In Phase.nii.gz")
    assert tuple(by["MR-10003"].modalities) == LIVER.modalities[:-1]
    for c in m:
        assert c.organ == "liver" and c.reports == {} and c.masks == {}
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in c.modalities.values())
    with pytest.warns(LLDMissingPhaseWarning):
        assert [c.split for c in import_lld_mmri(lld, fold="fold1")] == [c.split for c in m]


def test_lld_split_files_roundtrip_and_validate(tmp_path):
    base = tmp_path / "lld"
    _lld_case(base / "images", "MR12345")  # folder without the dash ...
    _lld_case(base / "images", "MR-20002")
    _lld_case(base / "images", "MR-20003")
    _lines(base / "labels_train.txt", "# case label\nMR-12345 4\n\n")  # ... listed with it
    _lines(base / "labels_val.txt", "MR-20002\t5\n")
    _lines(base / "labels_test.txt", "MR-20003,1\n")
    m = import_lld_mmri(base)
    assert [(c.case_id, c.split, c.label) for c in m] == [
        ("MR12345", "train", "hepatic_cyst"),
        ("MR-20002", "val", "focal_nodular_hyperplasia"),
        ("MR-20003", "test", "intrahepatic_cholangiocarcinoma"),
    ]
    out = m.save(tmp_path / "elsewhere" / "lld.jsonl")
    back = Manifest.load(out)
    assert [c.to_json() for c in back] == [c.to_json() for c in m]
    assert [c.to_json() for c in back.resolved()] == [c.to_json() for c in m]  # absolute paths
    validate = pytest.importorskip("medmap.data.validate")
    assert validate.validate_manifest(back, check_files=False) == []


def test_lld_labels_file_overrides_unknown_labels(lld):
    full = _lines(lld / "labels" / "all_labels.txt", "MR-10001 0\nMR-10002 6\nMR-10003 3\n"
                  "MR-10004 2\n")
    with pytest.warns(LLDMissingPhaseWarning):
        m = import_lld_mmri(lld, labels_file=full, fold=1)
    assert {c.case_id: (c.split, c.label) for c in m}["MR-10004"] == ("test", "hepatic_abscess")
    # without split files every case of labels_file is "train"
    (lld / "labels").rename(lld / "old_labels")
    with pytest.warns(LLDMissingPhaseWarning):
        m = import_lld_mmri(lld, labels_file=lld / "old_labels" / "all_labels.txt")
    assert len(m) == 4 and {c.split for c in m} == {"train"}


def test_lld_benign_malignant_covers_classes():
    assert set(LLD_BENIGN_MALIGNANT) == set(LIVER.classes)
    assert sorted(LLD_BENIGN_MALIGNANT.values()).count("malignant") == 3


def test_lld_missing_label_files(tmp_path, lld):
    empty = tmp_path / "empty"
    _lld_case(empty / "images", "MR-1")
    with pytest.raises(ManifestError) as e:
        import_lld_mmri(empty)
    msg = str(e.value)
    assert "no label file" in msg and "labels.txt" in msg and "labels_file" in msg

    with pytest.raises(ManifestError) as e:
        import_lld_mmri(lld, fold=2)
    msg = str(e.value)
    assert "train_fold2.txt" in msg and "val_fold2.txt" in msg and "gene_cross_val.py" in msg

    with pytest.raises(ManifestError, match="nope.txt does not exist"):
        import_lld_mmri(lld, labels_file="nope.txt")
    with pytest.raises(ManifestError, match="no images/ folder"):
        import_lld_mmri(tmp_path / "empty" / "images")
    with pytest.raises(ValueError, match="fold must be"):
        import_lld_mmri(lld, fold="x")


def test_lld_bad_label_unknown_phase_and_missing_case(lld):
    _lines(lld / "labels" / "train_fold1.txt", "MR-10001 9\nMR-10002 6\nMR-99999 1\n")
    _nii(lld / "images" / "MR-10002" / "Arterial.nii.gz")
    with pytest.raises(ManifestError) as e:
        import_lld_mmri(lld, fold=1)
    msg = str(e.value)
    bad = next(line for line in msg.splitlines() if "'9'" in line)
    assert "train_fold1.txt line 1" in bad and "MR-10001" in bad and "0..6" in bad
    assert "fix the label" in bad
    unk = next(line for line in msg.splitlines() if "Arterial" in line)
    assert "MR-10002" in unk and "unknown phase file" in unk and "rename or remove" in unk
    assert "'In Phase.nii.gz'" in unk
    gone = next(line for line in msg.splitlines() if "MR-99999" in line)
    assert "no case folder" in gone and "remove it from the label file" in gone


def test_lld_case_in_two_splits(lld):
    _lines(lld / "labels" / "val_fold1.txt", "MR-10003 3\nMR-10001 0\n")
    with pytest.raises(ManifestError, match=r"'MR-10001'.*keep it in one split only"):
        import_lld_mmri(lld, fold=1)


# ---- RadGenome-Brain ----------------------------------------------------------------------------
def _brats(folder: Path, cid: str, mods=("t1n", "t1c", "t2w", "t2f"), seg=True) -> None:
    for m in mods:
        _nii(folder / cid / f"{cid}-{m}.nii.gz")
    if seg:
        _nii(folder / cid / f"{cid}-seg.nii.gz", mask=True)


@pytest.fixture()
def rg(tmp_path):
    root = tmp_path / "RadGenome-Brain_MRI"
    # BraTS_GLI: all four JSONs in the subset folder, nested modal-wise findings, split keys in
    # odd casing, case folders in the subset folder.
    gli = root / "BraTS_GLI"
    for cid in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000"):
        _brats(gli, cid)
    _json(gli / "global_finding.json", {
        "BraTS-GLI-00001-000": "A mass in the left frontal lobe.",
        "BraTS-GLI-00002-000": "A right temporal lesion.",
    })
    _json(gli / "Impression.json", {
        "BraTS-GLI-00001-000": "Glioma likely.",
        "BraTS-GLI-00002-000": {"impression": "High-grade glioma.", "disease": ["glioma"]},
    })
    _json(gli / "modal_wise_finding.json", {
        "BraTS-GLI-00001-000": {"t2f": "FLAIR hyperintense.", "T1C": "Ring enhancement."},
        "BraTS-GLI-00002-000": {"BraTS-GLI-00002-000-t2w": "T2 bright."},
    })
    _json(gli / "train_val_test_split.json", {
        "Train": ["BraTS-GLI-00001-000"], "Validation": [], "TEST": ["BraTS-GLI-00002-000"]})
    # BraTS_MEN: flat "<case>-<mod>" keys, images under images/, one case lacking t1c; split in
    # the root-level file by image name (as released).
    men = root / "BraTS_MEN"
    _brats(men / "images", "BraTS-MEN-00010-000", mods=("t1n", "t2w", "t2f"), seg=False)
    _json(men / "global_finding.json", {"BraTS-MEN-00010-000": "Extra-axial mass."})
    _json(men / "impression.json", {"BraTS-MEN-00010-000": "Meningioma."})
    _json(men / "modal_wise_finding.json", {
        "BraTS-MEN-00010-000-t2f": "Mild oedema.",
        "BraTS-MEN-00010-000-t1c": "Homogeneous enhancement.",  # no t1c image: dropped
    })
    # ISLES22: BIDS-like nested case folder; WMH: bare T1/FLAIR names + wmh mask.
    isl = root / "ISLES22"
    cid = "sub-strokecase0001"
    _nii(isl / cid / "ses-0001" / "dwi" / f"{cid}_ses-0001_dwi.nii.gz")
    _nii(isl / cid / "ses-0001" / "dwi" / f"{cid}_ses-0001_adc.nii.gz")
    _json(isl / "global_finding.json", {cid: "Acute infarct."})
    _json(isl / "impression.json", {cid: "Stroke."})
    _json(isl / "modal_wise_finding.json", {f"{cid}_dwi": "Restricted diffusion.",
                                            f"{cid}_adc": "Low ADC."})
    wmh = root / "WMH"
    _nii(wmh / "100" / "pre" / "T1.nii.gz")
    _nii(wmh / "100" / "pre" / "FLAIR.nii.gz")
    _nii(wmh / "100" / "orig" / "FLAIR.nii.gz")  # raw copy: pre/ wins
    _nii(wmh / "100" / "pre" / "3DT1.nii.gz")  # skipped
    _nii(wmh / "100" / "wmh.nii.gz", mask=True)
    _json(wmh / "global_finding.json", {"100": "Periventricular hyperintensities."})
    _json(wmh / "impression.json", {"100": "Small vessel disease."})
    _json(wmh / "modal_wise_finding.json", {"100": {"FLAIR": "Hyperintense foci."}})
    _json(root / "train_val_test_split.json", {
        "train": ["BraTS-MEN-00010-000-t1n", "BraTS-MEN-00010-000-t2w"],
        "val": [f"{cid}_dwi", f"{cid}_adc"],
        "test": ["100-T1", "100-FLAIR", "BraTS-GLI-99999-000-t2f"],  # unknown ids are ignored
    })
    return root


def test_radgenome_import(rg):
    with pytest.warns(RadGenomeWarning) as rec:
        m = import_radgenome(rg)
    note = str(rec[0].message)
    assert "BraTS-MEN-00010-000 (BraTS_MEN): no T1C image" in note and "T1C dropped" in note
    by = {c.case_id: c for c in m}
    assert list(by) == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-MEN-00010-000",
                        "sub-strokecase0001", "100"]
    assert [c.split for c in m] == ["train", "test", "train", "val", "test"]
    assert [c.label for c in m] == ["malignant", "malignant", "benign", None, None]
    assert all(c.organ == "brain" for c in m)

    g1 = by["BraTS-GLI-00001-000"]
    assert list(g1.modalities) == ["T1WI", "T1C", "T2WI", "T2FLAIR"]
    assert g1.modalities["T2FLAIR"].endswith("BraTS-GLI-00001-000-t2f.nii.gz")
    assert g1.masks["lesion"].endswith("-seg.nii.gz")
    assert g1.reports == {"T1C": "Ring enhancement.", "T2FLAIR": "FLAIR hyperintense.",
                          "global": "A mass in the left frontal lobe. Glioma likely."}
    assert by["BraTS-GLI-00002-000"].reports == {
        "T2WI": "T2 bright.", "global": "A right temporal lesion. High-grade glioma."}
    men = by["BraTS-MEN-00010-000"]
    assert list(men.modalities) == ["T1WI", "T2WI", "T2FLAIR"]
    assert men.reports == {"T2FLAIR": "Mild oedema.", "global": "Extra-axial mass. Meningioma."}
    isl = by["sub-strokecase0001"]
    assert list(isl.modalities) == ["DWI", "ADC"]
    assert isl.reports["DWI"] == "Restricted diffusion." and isl.reports["ADC"] == "Low ADC."
    w = by["100"]
    assert list(w.modalities) == ["T1WI", "T2FLAIR"]
    assert "/pre/" in w.modalities["T2FLAIR"] and w.masks["lesion"].endswith("wmh.nii.gz")
    assert w.reports["T2FLAIR"] == "Hyperintense foci."
    for c in m:
        assert all(Path(p).is_absolute() and Path(p).is_file()
                   for p in list(c.modalities.values()) + list(c.masks.values()))


def test_radgenome_roundtrip_validate_and_subsets(rg, tmp_path):
    with pytest.warns(RadGenomeWarning, match=r"sub-strokecase0001 \(ISLES22\): no lesion mask"):
        m = import_radgenome(rg, subsets=["brats-gli", "ISLES2022"])
    assert [c.case_id for c in m] == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000",
                                      "sub-strokecase0001"]
    back = Manifest.load(m.save(tmp_path / "out" / "rg.jsonl"))
    assert [c.to_json() for c in back] == [c.to_json() for c in m]
    assert [c.to_json() for c in back.resolved()] == [c.to_json() for c in m]
    validate = pytest.importorskip("medmap.data.validate")
    assert validate.validate_manifest(back, check_files=False) == []
    with pytest.raises(ValueError, match="unknown RadGenome subset 'BraTS_PED'"):
        import_radgenome(rg, subsets=["BraTS_PED"])


def test_radgenome_label_mapping_documented():
    assert RADGENOME_SUBSET_LABELS == {"BraTS_GLI": "malignant", "BraTS_MEN": "benign",
                                       "BraTS_MET": "malignant", "ISLES22": None, "WMH": None}
    doc = (Path(__file__).resolve().parents[2] / "docs" / "datasets.md")
    if doc.exists():
        text = doc.read_text()
        assert "BraTS_MEN" in text and "benign" in text and "ISLES22" in text


def test_radgenome_errors(rg):
    (rg / "BraTS_GLI" / "Impression.json").unlink()
    _nii(rg / "ISLES22" / "sub-strokecase0001" / "ses-0001" / "dwi" / "sub-strokecase0001_x.nii.gz")
    _json(rg / "WMH" / "global_finding.json", {"100": "x", "101": "no images for this one"})
    _json(rg / "WMH" / "train_val_test_split.json", {"train": ["101"], "val": ["100"]})
    with pytest.raises(ManifestError) as e:
        import_radgenome(rg)
    lines = str(e.value).splitlines()
    miss = next(x for x in lines if "impression.json" in x)
    assert "BraTS_GLI" in miss and "is missing" in miss and "huggingface.co" in miss
    unk = next(x for x in lines if "sub-strokecase0001_x" in x)
    assert "case 'sub-strokecase0001'" in unk and "unknown image file" in unk
    assert "remove the file" in unk
    noimg = next(x for x in lines if "'101'" in x)
    assert "no image files" in noimg and "WMH" in noimg and "image_root" in noimg
    both = next(x for x in lines if "'100'" in x)
    assert "keep it in one split only" in both


def test_radgenome_subset_without_images_and_missing_split(rg):
    for p in sorted((rg / "BraTS_GLI").glob("BraTS-GLI-*/*.nii.gz")):
        p.unlink()
    (rg / "train_val_test_split.json").unlink()
    with pytest.raises(ManifestError) as e:
        import_radgenome(rg, subsets=["BraTS_GLI", "WMH"])
    msg = str(e.value)
    assert "subset BraTS_GLI: no images found for any of its 2 cases" in msg
    assert "BraTS 2023 adult-glioma" in msg
    with pytest.raises(ManifestError, match="train_val_test_split.json is missing"):
        import_radgenome(rg, subsets=["WMH"])


def test_radgenome_image_root_and_unsplit_cases(rg, tmp_path):
    # images kept apart from the reports, flat "<case>-<mod>.nii.gz" files
    ext = tmp_path / "challenges" / "BraTS-MET"
    for mod in ("t1n", "t1c", "t2w", "t2f"):
        _nii(ext / f"BraTS-MET-00005-000-{mod}.nii.gz")
    met = rg / "BraTS_MET"
    _json(met / "global_finding.json", {"BraTS-MET-00005-000": "Multiple lesions.",
                                        "BraTS-MET-00006-000": "Not in any split."})
    _json(met / "impression.json", {"BraTS-MET-00005-000": "Metastases."})
    _json(met / "modal_wise_finding.json", {"BraTS-MET-00005-000-t1c": "Enhancing nodules."})
    _json(met / "train_val_test_split.json", {"test": ["BraTS-MET-00005-000"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RadGenomeWarning)
        with pytest.raises(ManifestError, match="no images found"):
            import_radgenome(rg, subsets=["BraTS_MET"])
    with pytest.warns(RadGenomeWarning, match="1 BraTS_MET case.*left out: BraTS-MET-00006-000"):
        m = import_radgenome(rg, subsets=["BraTS_MET"], image_root=tmp_path / "challenges")
    (c,) = m.cases
    assert (c.case_id, c.split, c.label) == ("BraTS-MET-00005-000", "test", "malignant")
    assert c.reports == {"T1C": "Enhancing nodules.", "global": "Multiple lesions. Metastases."}
    with pytest.warns(RadGenomeWarning):
        m2 = import_radgenome(rg, subsets=["BraTS_MET"], image_root={"BraTS_MET": ext})
    assert m2.cases[0].modalities == c.modalities
