"""medmap.predict: case folders (missing modalities, case-insensitive names), manifests, single
volumes, CAMs written on the source's own grid, and clear errors for bad inputs."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medmap.data.io import VolumeReadError
from medmap.data.manifest import Manifest, ManifestError
from medmap.data.preprocess import PreprocessConfig, Preprocessor
from medmap.data.vocab import get_organ
from medmap.cam import gradcam
from medmap.models.hub import from_pretrained, save_pretrained
from medmap.models.medmap import MedMAPClassifier, MedMAPConfig
from medmap.predict import PredictInputError, predict


def tiny_classifier(mods, classes, organ="liver"):
    """A tiny untrained MedMAP classifier with random prompt buffers (seeded)."""
    torch.manual_seed(0)
    model = MedMAPClassifier(MedMAPConfig.tiny(list(mods), list(classes), organ=organ))
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "prompt" in name:
                buf.normal_()
    return model


MODS = ["T2WI", "DWI", "C+A"]
CLASSES = list(get_organ("liver").classes)
COLUMNS = ["case_id", "predicted", *[f"prob_{c}" for c in CLASSES], "modalities_used",
           "modalities_missing", "label", "source"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from medmap.data.sim import simulate

    root = tmp_path_factory.mktemp("pred_sim")
    # gzipped volumes (simulate's compress option): these tests feed .nii.gz files to predict
    simulate(root, cases=7, size=32, seed=0, organs=("liver",), workers=1, compress=True)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = tiny_classifier(MODS, CLASSES)
    out = tmp_path_factory.mktemp("model") / "model"
    save_pretrained(model, out, organ="liver",
                    preprocess=PreprocessConfig(spacing=None, size=(32, 32, 32)).to_dict())
    return out


@pytest.fixture(scope="module")
def full_case(sim):
    """A simulated case folder holding all of MODS."""
    for c in Manifest.load(sim / "manifest.jsonl").resolved():
        if all(m in c.modalities for m in MODS):
            return Path(c.modalities["T2WI"]).parent
    pytest.skip("no simulated case with all of T2WI, DWI, C+A")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def check_probs(row) -> None:
    p = np.array([float(row[f"prob_{c}"]) for c in CLASSES])
    assert np.all(p >= 0) and p.sum() == pytest.approx(1.0, abs=1e-5)
    assert row["predicted"] == CLASSES[int(p.argmax())]


def test_case_folder_with_missing_modality(model_dir, full_case, tmp_path):
    case = tmp_path / "patient_7"
    case.mkdir()
    shutil.copy(full_case / "T2WI.nii.gz", case / "t2wi.nii.gz")       # case-insensitive
    shutil.copy(full_case / "DWI.nii.gz", case / "DWI.nii.gz")         # C+A missing
    shutil.copy(full_case / "lesion_mask.nii.gz", case / "lesion_mask.nii.gz")
    (case / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match=r"ignoring 2 file.*lesion_mask\.nii\.gz, notes\.txt"):
        rows = predict(model_dir, case, tmp_path / "preds.csv")
    assert len(rows) == 1 and list(rows[0]) == COLUMNS
    r = rows[0]
    assert r["case_id"] == "patient_7"
    assert r["modalities_used"] == "T2WI;DWI" and r["modalities_missing"] == "C+A"
    check_probs(r)
    on_disk = read_csv(tmp_path / "preds.csv")
    assert list(on_disk[0]) == COLUMNS and on_disk[0]["modalities_missing"] == "C+A"
    check_probs(on_disk[0])


def test_manifest_input(model_dir, sim, tmp_path):
    cases = Manifest.load(sim / "manifest.jsonl").resolved()
    rows = predict(model_dir, sim / "manifest.jsonl", tmp_path / "preds.csv")
    assert [r["case_id"] for r in rows] == [c.case_id for c in cases]
    for r, c in zip(rows, cases):
        check_probs(r)
        assert r["label"] == c.label
        assert r["modalities_used"].split(";") == [m for m in MODS if m in c.modalities]
        assert r["modalities_missing"] == ";".join(m for m in MODS if m not in c.modalities)
    assert len(read_csv(tmp_path / "preds.csv")) == len(cases)


def test_single_volume(model_dir, full_case, tmp_path):
    rows = predict(model_dir, full_case / "C+A.nii.gz", None)        # modality from the stem
    assert rows[0]["case_id"] == "C+A" and rows[0]["modalities_used"] == "C+A"
    assert rows[0]["modalities_missing"] == "T2WI;DWI"
    check_probs(rows[0])
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(full_case / "T2WI.nii.gz", scan)
    rows = predict(model_dir, scan, tmp_path / "one.csv", modality="t2wi")
    assert rows[0]["modalities_used"] == "T2WI"
    with pytest.raises(PredictInputError,
                       match=r"scan\.nii\.gz: cannot tell the modality.*--modality"):
        predict(model_dir, scan, None)
    with pytest.raises(PredictInputError, match="'FLAIR' is not one of the model's modalities"):
        predict(model_dir, scan, None, modality="FLAIR")


def test_cam_nifti_on_source_grid(model_dir, full_case, tmp_path):
    arr = np.asarray(nib.load(str(full_case / "T2WI.nii.gz")).dataobj, dtype=np.float32)
    arr = arr[1:31, 2:30, 3:29]                                         # (30, 28, 26)
    affine = np.array([[0.0, -0.9, 0.0, 12.0],                          # permuted, flipped axes
                       [1.2, 0.0, 0.0, -20.0],
                       [0.0, 0.0, 2.0, 5.0],
                       [0.0, 0.0, 0.0, 1.0]])
    case = tmp_path / "oblique"
    case.mkdir()
    nib.save(nib.Nifti1Image(arr, affine), str(case / "T2WI.nii.gz"))
    rows = predict(model_dir, case, None, cam_dir=tmp_path / "cams")
    out = tmp_path / "cams" / "oblique" / "T2WI_cam.nii.gz"
    assert out.is_file() and rows[0]["modalities_used"] == "T2WI"
    assert sorted(p.name for p in (tmp_path / "cams" / "oblique").iterdir()) == ["T2WI_cam.nii.gz"]
    cam = nib.load(str(out))
    src = nib.load(str(case / "T2WI.nii.gz"))
    assert cam.shape == src.shape == (30, 28, 26)
    assert np.allclose(cam.affine, src.affine, atol=1e-5)
    data = cam.get_fdata()
    assert np.isfinite(data).all() and data.min() >= -1e-4 and data.max() <= 1 + 1e-4
    assert data.max() > 0
    # the native CAM carried back through the forward geometry matches the model-space CAM
    model, doc = from_pretrained(model_dir)
    pre = Preprocessor(PreprocessConfig.from_dict(doc["preprocess"]))
    x = torch.zeros(1, 3, 1, 32, 32, 32)
    x[0, 0] = pre(case / "T2WI.nii.gz", "T2WI")
    present = torch.tensor([[True, False, False]])
    ref = gradcam(model, x, present, class_index=CLASSES.index(rows[0]["predicted"]))["T2WI"][0]
    back = pre.spatial_transform()(pre.load(out))[0]
    r = np.corrcoef(np.asarray(back).ravel(), ref.numpy().ravel())[0, 1]
    assert r > 0.9, r


def test_bad_inputs(model_dir, full_case, sim, tmp_path):
    with pytest.raises(PredictInputError, match="nowhere: not found"):
        predict(model_dir, tmp_path / "nowhere", None)
    empty = tmp_path / "case_x"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    shutil.copy(full_case / "lesion_mask.nii.gz", empty / "mask.nii.gz")
    with pytest.raises(PredictInputError,
                       match=r"case_x: no file matches the model's modalities \(T2WI, DWI, C\+A\)"
                             r"; name each volume after its modality"):
        predict(model_dir, empty, None)
    dup = tmp_path / "case_dup"
    dup.mkdir()
    shutil.copy(full_case / "T2WI.nii.gz", dup / "T2WI.nii.gz")
    shutil.copy(full_case / "T2WI.nii.gz", dup / "t2wi.nii")
    with pytest.raises(PredictInputError, match="several files for one modality"):
        predict(model_dir, dup, None)
    broken = tmp_path / "case_broken"
    broken.mkdir()
    (broken / "T2WI.nii.gz").write_bytes(gzip.compress(b"not a nifti file" * 10)[:40])
    with pytest.raises(VolumeReadError,
                       match=r"case 'case_broken', modality T2WI: .*T2WI\.nii\.gz: unreadable"):
        predict(model_dir, broken, None)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PredictInputError, match="unsupported input"):
        predict(model_dir, tmp_path / "notes.txt", None)
    cases = Manifest.load(sim / "manifest.jsonl").resolved()
    cases[0].modalities["T2WI"] = str(tmp_path / "gone.nii.gz")
    bad = Manifest(cases, tmp_path).save(tmp_path / "bad.jsonl")
    with pytest.raises(ManifestError, match=r"gone\.nii\.gz\): file not found"):
        predict(model_dir, bad, None)


def test_roi_model_needs_and_uses_the_organ_mask(model_dir, full_case, sim, tmp_path):
    """A model trained on liver-cropped volumes (preprocess.roi_mask) takes the liver mask from
    the case folder, --roi or the manifest, and writes CAMs zero outside the crop box."""
    over = {"roi_mask": "liver", "roi_margin_mm": 0.0}
    case = tmp_path / "case"
    shutil.copytree(full_case, case)
    liver = case / "liver_mask.nii.gz"
    assert liver.is_file()                                       # written by the simulator
    shutil.move(str(liver), tmp_path / "liver_elsewhere.nii.gz")
    with pytest.raises(PredictInputError, match=r"case 'case'.*'liver' organ mask.*--roi"):
        predict(model_dir, case, None, preprocess_override=over)
    with pytest.raises(PredictInputError, match=r"nowhere.nii.gz: --roi file not found"):
        predict(model_dir, case, None, preprocess_override=over, roi=tmp_path / "nowhere.nii.gz")
    rows = predict(model_dir, case, None, preprocess_override=over, cam_dir=tmp_path / "cams",
                   roi=tmp_path / "liver_elsewhere.nii.gz")
    check_probs(rows[0])
    shutil.move(str(tmp_path / "liver_elsewhere.nii.gz"), liver)
    again = predict(model_dir, case, None, preprocess_override=over)       # found in the folder
    assert again[0]["prob_" + CLASSES[0]] == pytest.approx(rows[0]["prob_" + CLASSES[0]])
    plain = predict(model_dir, case, None)
    assert plain[0]["prob_" + CLASSES[0]] != pytest.approx(rows[0]["prob_" + CLASSES[0]])
    cam = np.asarray(nib.load(str(tmp_path / "cams" / "case" / "T2WI_cam.nii.gz")).dataobj)
    organ = np.asarray(nib.load(str(liver)).dataobj) > 0
    idx = np.argwhere(organ)
    box = np.zeros_like(organ)
    box[tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0)))] = True
    assert cam.shape == organ.shape and np.abs(cam[~box]).max() == 0 and cam[box].max() > 0
    # a manifest input takes masks.liver; one without it is refused naming the case and field
    rows_m = predict(model_dir, sim / "manifest.jsonl", None, preprocess_override=over)
    assert len(rows_m) == len(Manifest.load(sim / "manifest.jsonl"))
    m = Manifest.load(sim / "manifest.jsonl")
    m.cases[0].masks.pop("liver")
    m.save(sim / "no_liver.jsonl")
    with pytest.raises(ManifestError, match=rf"case '{m.cases[0].case_id}': masks.liver: missing"):
        predict(model_dir, sim / "no_liver.jsonl", None, preprocess_override=over)


def _load_test_module(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cam_folders_stay_inside_the_cam_dir(model_dir, sim, tmp_path):
    """Case ids '..', '.', '../x' and two ids that sanitise alike: every CAM lands in its own
    folder inside --cam, none in its parent."""
    cases = Manifest.load(sim / "manifest.jsonl").resolved()[:5]
    ids = ["..", ".", "../x", "a/b", "a_b"]
    for c, cid in zip(cases, ids):
        c.case_id = cid
    m = Manifest(cases, tmp_path).save(tmp_path / "odd.jsonl")
    out = tmp_path / "out"
    cams = out / "cams"
    rows = predict(model_dir, m, None, cam_dir=cams)
    assert [r["case_id"] for r in rows] == ids
    assert sorted(p.name for p in out.iterdir()) == ["cams"]           # nothing beside cams/
    folders = sorted(p.name for p in cams.iterdir())
    assert len(folders) == 5 and all(p.is_dir() for p in cams.iterdir()), folders
    assert not any(n in (".", "..") or n.startswith(".") for n in folders), folders
    assert all(list((cams / n).glob("*_cam.nii.gz")) for n in folders)


def test_manifest_reports_play_no_part_in_prediction(model_dir, sim, tmp_path):
    """A report for a modality the case lacks (or an empty one) does not stop prediction."""
    cases = Manifest.load(sim / "manifest.jsonl").resolved()[:2]
    dropped = next(m for m in cases[0].modalities if m not in MODS)
    del cases[0].modalities[dropped]
    cases[0].reports[dropped] = "a report for a sequence this case does not have"
    cases[1].reports["global"] = "   "
    m = Manifest(cases, tmp_path).save(tmp_path / "reports.jsonl")
    rows = predict(model_dir, m, None)
    assert [r["case_id"] for r in rows] == [c.case_id for c in cases]


def test_predict_series_of_a_shared_dicom_folder(model_dir, tmp_path, capsys):
    """``--series UID`` reads one series of a DICOM folder holding several."""
    pytest.importorskip("pydicom")
    from medmap.cli import main

    dicom = _load_test_module("dicom_helpers", Path(__file__).parent / "data" /
                              "test_dicom_series.py")
    rng = np.random.default_rng(0)
    vol = (100 + 20 * rng.standard_normal((20, 20, 12))).astype(np.float32)
    folder = tmp_path / "T2WI"
    aff = np.diag([1.5, 1.5, 2.5, 1.0])
    uid, _, _ = dicom.write_series(folder, vol, aff, rng=rng, number=1)
    dicom.write_series(folder, vol[:, :, :8], aff, rng=rng, number=2)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(model_dir), str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds 2 DICOM series" in err and "Traceback" not in err
    assert main(["predict", str(model_dir), str(folder), "--series", uid, "--out", str(out)]) == 0
    (row,) = read_csv(out)
    assert row["case_id"] == "T2WI" and row["modalities_used"] == "T2WI"
    assert row["source"] == f"{folder}#{uid}"
    check_probs(row)
    assert main(["predict", str(model_dir), str(out), "--series", uid]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_report_mode_model_reads_reports_and_says_so(sim, tiny_bert, tmp_path, capsys):
    """csa_text 'report' (report-assisted diagnosis): predict and evaluate read the cases' own
    reports, warn about label leakage, and say which text guides the model; other reports give
    other predictions; a case folder (no reports) is refused."""
    from medmap.cli import main
    from medmap.eval.evaluate import evaluate

    torch.manual_seed(0)
    model = MedMAPClassifier(MedMAPConfig.tiny(MODS, CLASSES, organ="liver", csa_text="report"))
    with torch.no_grad():                       # a trained-looking gate: reports matter
        model.guidance.gate.weight.normal_(0, 0.5)
    out = tmp_path / "model"
    save_pretrained(model, out, organ="liver", text_model={"name": str(tiny_bert)},
                    preprocess=PreprocessConfig(spacing=None, size=(32, 32, 32)).to_dict())
    manifest = sim / "manifest.jsonl"
    with pytest.warns(UserWarning, match="leaks the label"):
        rows = predict(out, manifest, tmp_path / "p.csv")
    m = Manifest.load(manifest)
    for c in m.cases:
        c.reports = {k: "completely different words" for k in c.reports}
    other = m.save(sim / "other-reports.jsonl")
    with pytest.warns(UserWarning):
        rows2 = predict(out, other, None)
    assert any(abs(a[f"prob_{CLASSES[0]}"] - b[f"prob_{CLASSES[0]}"]) > 1e-6
               for a, b in zip(rows, rows2))
    case_dir = Path(m.resolved()[0].modalities["T2WI"]).parent
    with pytest.raises(PredictInputError, match="reads each case's per-sequence reports"):
        predict(out, case_dir, None)
    with pytest.warns(UserWarning, match="leaks the label"):
        res = evaluate(out, manifest, split=None, out_dir=tmp_path / "ev", n_boot=20)
    assert "read at inference" in res["info"]["CSA text guidance"]
    assert main(["predict", str(out), str(manifest), "--out", str(tmp_path / "q.csv")]) == 0
    assert "text guidance: the case's own reports" in capsys.readouterr().out
