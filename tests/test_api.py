"""medmap.load / Classifier.predict / predict_many: the Python API gives the CLI's
probabilities, takes volumes as paths, nibabel images or (array, affine), and returns CAMs as
nibabel images on the input's grid."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

import medmap
from medmap.cli import main
from medmap.config import UserError
from medmap.data.manifest import Manifest
from medmap.data.preprocess import PreprocessConfig
from medmap.models.hub import save_pretrained
from test_predict import CLASSES, MODS, tiny_classifier


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from medmap.data.sim import simulate

    root = tmp_path_factory.mktemp("api_sim")
    simulate(root, cases=4, size=32, seed=1, organs=("liver",), workers=1)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("api_model") / "run" / "model"
    save_pretrained(tiny_classifier(MODS, CLASSES), out, organ="liver",
                    preprocess=PreprocessConfig(spacing=None, size=(32, 32, 32)).to_dict())
    return out


def test_load_opens_a_run_or_model_folder(model_dir):
    model = medmap.load(model_dir.parent)              # the run folder around model/
    assert isinstance(model, medmap.Classifier)
    assert model.classes == CLASSES and model.modalities == MODS and model.organ == "liver"
    assert "class-knowledge" in model.text_guidance
    assert model.reads_mask is False            # the tiny model pools without a mask
    assert set(medmap.__all__) >= {"load", "Classifier", "Pretrained", "Prediction"}


def test_predict_many_equals_the_cli(model_dir, sim, tmp_path):
    manifest = sim / "manifest.jsonl"
    assert main(["predict", str(model_dir), str(manifest), "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        cli = {r["case_id"]: r for r in csv.DictReader(f)}
    preds = medmap.load(model_dir).predict_many(manifest, progress=False)
    assert [p.case_id for p in preds] == list(cli)
    for p in preds:
        assert p.predicted == cli[p.case_id]["predicted"]
        for c in CLASSES:
            assert abs(p.probabilities[c] - float(cli[p.case_id][f"prob_{c}"])) < 1e-6
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-5


def test_predict_one_case_from_images_arrays_and_paths(model_dir, sim):
    case = next(c for c in Manifest.load(sim / "manifest.jsonl").resolved()
                if all(m in c.modalities for m in MODS))
    model = medmap.load(model_dir)
    by_path = model.predict({m: case.modalities[m] for m in MODS}, cam=False)
    img = nib.load(case.modalities["T2WI"])
    mixed = {"T2WI": img,                                          # a nibabel image
             "DWI": (np.asarray(nib.load(case.modalities["DWI"]).dataobj),
                     nib.load(case.modalities["DWI"]).affine),     # (array, affine)
             "C+A": case.modalities["C+A"]}                         # a path
    res = model.predict(mixed, case_id=case.case_id)
    for c in CLASSES:
        assert abs(res.probabilities[c] - by_path.probabilities[c]) < 1e-5
    assert res.case_id == case.case_id and res.predicted in CLASSES
    # a CAM per sequence, as a nibabel image on that input's own grid
    assert set(res.cams) == set(MODS)
    cam = res.cams["T2WI"]
    assert cam.shape == img.shape and np.allclose(cam.affine, img.affine, atol=1e-5)
    data = cam.get_fdata()
    assert np.isfinite(data).all() and data.max() > 0


def test_bad_cases_name_the_case_and_the_fix(model_dir, tmp_path):
    model = medmap.load(model_dir)
    with pytest.raises(UserError, match=r"case 'x', sequence T2WI: .*does not exist"):
        model.predict({"T2WI": tmp_path / "missing.nii.gz"}, case_id="x")
    with pytest.raises(UserError, match=r"sequence DWI: give \(array of 3 dimensions"):
        model.predict({"DWI": (np.zeros((4, 4)), np.eye(4))}, case_id="y")
    with pytest.raises(UserError, match="'volumes'"):
        model.predict_many([{"T2WI": "a.nii.gz"}])


def test_load_a_pretrained_model_and_run_zeroshot(tiny_experiment, tmp_path):
    from medmap.train.medmap import pretrain

    cfg = tiny_experiment
    cfg.pretrain.epochs = 1
    pre = medmap.load(pretrain(cfg, tmp_path / "pre"))
    assert isinstance(pre, medmap.Pretrained) and pre.model_type == "medmap_clip"
    zs = pre.zeroshot(cfg.data.manifest, split="val", n_boot=20, cache_dir=cfg.data.cache_dir)
    assert 0.0 <= zs["accuracy"] <= 1.0
    emb = pre.embed(cfg.data.manifest, tmp_path / "emb", split="val",
                    cache_dir=cfg.data.cache_dir)
    assert emb and (tmp_path / "emb").is_dir()
    with pytest.raises(FileNotFoundError, match="not a medmap model folder"):
        medmap.load(tmp_path)
