"""medmap.bundle: a classifier exported as a MONAI bundle passes MONAI's metadata
verification, runs under ``python -m monai.bundle run`` on a case folder and writes the same
probabilities as ``medmap predict``; no pickle, no copied code."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from medmap.bundle import export_monai_bundle
from medmap.config import UserError
from medmap.data.preprocess import PreprocessConfig
from medmap.models.hub import save_pretrained
from medmap.predict import predict

from test_predict import CLASSES, MODS, full_case, sim, tiny_classifier  # noqa: F401 (fixtures)

# The fields MONAI's bundle metadata schema (meta_schema_20240725, the URL the metadata names)
# requires, and the shape it gives network_data_format. verify_metadata downloads the official
# schema into --filepath; offline, a file already there is used, so the test supplies this one.
_TENSOR = {"type": "object",
           "required": ["type", "format", "num_channels", "spatial_shape", "dtype",
                        "value_range"],
           "properties": {"type": {"type": "string"}, "format": {"type": "string"},
                          "num_channels": {"type": "integer"},
                          "spatial_shape": {"type": "array",
                                            "items": {"type": ["string", "integer"]}},
                          "dtype": {"type": "string"},
                          "value_range": {"type": "array", "items": {"type": "number"}},
                          "is_patch_data": {"type": "boolean"},
                          "channel_def": {"type": "object"}}}
_IO = {"type": "object", "required": ["inputs", "outputs"],
       "properties": {"inputs": {"type": "object", "additionalProperties": _TENSOR},
                      "outputs": {"type": "object", "additionalProperties": _TENSOR}}}
SCHEMA = {"$schema": "https://json-schema.org/draft/2019-09/schema", "type": "object",
          "required": ["schema", "version", "monai_version", "pytorch_version", "numpy_version",
                       "required_packages_version", "task", "description", "authors",
                       "copyright", "network_data_format"],
          "properties": {**{k: {"type": "string"} for k in (
              "schema", "version", "monai_version", "pytorch_version", "numpy_version", "task",
              "description", "authors", "copyright", "data_source", "data_type",
              "image_classes", "label_classes", "pred_classes", "intended_use")},
              "changelog": {"type": "object"}, "required_packages_version": {"type": "object"},
              "eval_metrics": {"type": "object"},
              "references": {"type": "array", "items": {"type": "string"}},
              "network_data_format": _IO}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny classifier that reads the lesion mask, as the demo's does."""
    model = tiny_classifier(MODS, CLASSES)
    model.cfg = dataclasses.replace(model.cfg, pooling="mask")
    out = tmp_path_factory.mktemp("bmodel") / "model"
    save_pretrained(model, out, organ="liver",
                    preprocess=PreprocessConfig(spacing=None, size=(32, 32, 32),
                                                roi_mask="lesion").to_dict())
    return out


@pytest.fixture(scope="module")
def bundle(model_dir, tmp_path_factory):
    return export_monai_bundle(model_dir, tmp_path_factory.mktemp("b") / "bundle")


def test_layout_and_no_pickle(bundle):
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert files == ["LICENSE", "configs/inference.json", "configs/metadata.json",
                     "docs/README.md", "models/config.json", "models/model.safetensors"]
    inf = json.loads((bundle / "configs/inference.json").read_text())
    targets = []

    def walk(x):
        if isinstance(x, dict):
            targets.extend([x["_target_"]] if "_target_" in x else [])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(inf)
    assert targets and all(t.startswith("medmap.") for t in targets)   # medmap's own classes
    assert inf["network_def"]["_target_"] == "medmap.models.medmap.MedMAPClassifier"
    card = (bundle / "docs/README.md").read_text()
    assert "python -m monai.bundle run" in card and "library_name: medmap" in card   # the card


def test_metadata_passes_monai_verification(bundle, tmp_path):
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    meta = bundle / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta), filepath=str(schema))          # raises on failure
    doc = json.loads(meta.read_text())
    fmt = doc["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == len(MODS)
    assert fmt["outputs"]["pred"]["channel_def"] == {str(i): c for i, c in enumerate(CLASSES)}
    assert doc["required_packages_version"]["medmap"]

    # control: the verification does fail on metadata missing what the schema requires
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in doc.items() if k != "network_data_format"}))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(bad), filepath=str(schema))


def test_monai_bundle_run_matches_medmap_predict(bundle, model_dir, full_case, tmp_path):
    case = full_case
    out = tmp_path / "preds"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs/inference.json"), "--bundle_root", str(bundle),
                           "--dataset_dir", str(case), "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    want = predict(model_dir, case, None)
    assert len(rows) == len(want) == 1
    p_bundle = np.array([float(rows[0][f"prob_{c}"]) for c in CLASSES])
    p_medmap = np.array([float(want[0][f"prob_{c}"]) for c in CLASSES])
    assert np.abs(p_bundle - p_medmap).max() <= 1e-5
    assert rows[0]["predicted"] == want[0]["predicted"]


def test_export_refuses_non_empty_folder_and_cli(model_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty.*--overwrite"):
        export_monai_bundle(model_dir, out)
    from medmap.cli import main

    assert main(["export", str(model_dir), str(out), "--format", "monai-bundle",
                 "--overwrite"]) == 0
    assert "python -m monai.bundle run" in capsys.readouterr().out
    assert not (out / "keep.txt").exists() and (out / "configs/metadata.json").is_file()


def test_export_of_a_folder_that_holds_no_model_names_it_and_the_fix(tmp_path, capsys):
    from medmap.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "not a medmap model folder" in err and "save_pretrained" in err
