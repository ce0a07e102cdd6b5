"""Export a medmap classifier as a MONAI bundle (the MONAI Model Zoo format).

The bundle holds no copied code: its inference config builds the network from medmap's own
classes (``_target_``), loads ``models/model.safetensors`` (no pickle) and runs
:func:`medmap.predict.predict_with_model`, the function behind ``medmap predict``, so both give
the same probabilities. It needs ``pip install medmap`` and nothing else::

    medmap export runs/liver/finetune OUT --format monai-bundle
    python -m monai.bundle run --config_file OUT/configs/inference.json \\
        --bundle_root OUT --dataset_dir CASE_FOLDER --output_dir preds

Layout::

    OUT/configs/metadata.json    version, packages, task, network_data_format (MONAI schema)
    OUT/configs/inference.json   network_def, preprocessing, run
    OUT/models/model.safetensors the weights (and the prompt buffers)
    OUT/models/config.json       the medmap model folder's config (provenance)
    OUT/docs/README.md           the model card, with how to run the bundle
    OUT/LICENSE

Example:
    >>> export_monai_bundle("runs/liver/finetune", "liver-bundle")     # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmap.config import UserError, to_dict

__all__ = ["export_monai_bundle", "load_weights", "BUNDLE_FORMATS", "SCHEMA_URL"]

BUNDLE_FORMATS = ("monai-bundle",)
# the MONAI bundle metadata schema this bundle follows (verify_metadata downloads it)
_PAPER = ("3D Modality-Aware Pre-training for Vision-Language Model in MRI Multi-organ "
          "Abnormality Detection (MedMAP), arXiv:2602.23652")
SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
              "meta_schema_20240725.json")


def load_weights(network: nn.Module, path: str | Path,
                 device: str | torch.device = "cpu") -> nn.Module:
    """Load a ``model.safetensors`` into ``network`` (strict), move it to ``device`` and switch
    it to eval mode; the bundle's inference config calls this."""
    from safetensors.torch import load_file

    state = load_file(str(path), device="cpu")
    network.load_state_dict(state, strict=True)
    return network.to(device).eval()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    import monai
    import numpy

    from medmap import __version__

    out = {"monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
           "numpy_version": numpy.__version__}
    req = {"medmap": __version__}
    for pkg in ("nibabel", "safetensors"):
        try:
            req[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out["required_packages_version"] = req
    return out


def _test_metrics(model_dir: Path) -> dict[str, float]:
    """Accuracy / AUC of the run's test evaluation (``RUN/eval-test/metrics.json``), if any."""
    path = model_dir.resolve().parent / "eval-test" / "metrics.json"
    try:
        m = json.loads(path.read_text(encoding="utf-8")).get("metrics") or {}
    except (OSError, ValueError):
        return {}
    return {f"test_{k}": float(m[k]) for k in ("accuracy", "auc", "balanced_accuracy")
            if isinstance(m.get(k), (int, float))}


def _metadata(doc: dict[str, Any], cfg, pcfg: dict[str, Any], evals: dict[str, float]) -> dict:
    mods, classes = list(cfg.modalities), list(cfg.classes)
    organ = doc.get("organ") or cfg.organ or "unknown organ"
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medmap {doc.get('medmap_version')}"},
        **_versions(),
        "name": f"medmap {organ} lesion classifier",
        "task": f"Classification of {organ} lesions from multi-sequence MRI ({len(classes)} "
                "classes)",
        "description": ("MedMAP classifier (one 3D expert per MRI sequence, cross-modal semantic "
                        "aggregation, cross-cognition transformer), trained with medmap. Input: "
                        "a case folder (one volume per sequence, plus the lesion/organ masks the "
                        "model's preprocessing names) or a medmap manifest; output: "
                        "predictions.csv with one probability per class."),
        "authors": "medmap contributors",
        "copyright": "Copyright (c) medmap contributors",
        "data_source": str(doc.get("data_manifest") or "see docs/README.md"),
        "data_type": "nibabel",
        "image_classes": ", ".join(f"channel {i}: {m}" for i, m in enumerate(mods)),
        "pred_classes": ", ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "eval_metrics": evals,
        "intended_use": "Research only; not for clinical use.",
        "references": [_PAPER],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "MR",
                "num_channels": len(mods), "spatial_shape": list(pcfg["size"]),
                "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                "channel_def": {str(i): m for i, m in enumerate(mods)}}},
            "outputs": {"pred": {
                "type": "probabilities", "format": "classes", "num_channels": len(classes),
                "spatial_shape": [1], "dtype": "float32", "value_range": [0, 1],
                "is_onehot": False,
                "channel_def": {str(i): c for i, c in enumerate(classes)}}},
        },
    }


def _inference(doc: dict[str, Any], pcfg: dict[str, Any]) -> dict[str, Any]:
    organ = doc.get("organ") or doc["config"].get("organ") or None
    return {
        "imports": ["$import torch", "$from medmap.bundle import load_weights",
                    "$from medmap.models.medmap import MedMAPConfig",
                    "$from medmap.predict import predict_with_model"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/sample'",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "organ": organ,
        "network_def": {
            "_target_": "medmap.models.medmap.MedMAPClassifier",
            "cfg": {"_target_": "medmap.config.from_dict",
                    "cls": "$MedMAPConfig", "data": doc["config"]}},
        "network": "$load_weights(@network_def, @bundle_root + "
                   "'/models/model.safetensors', @device)",
        "preprocessing": {"_target_": "medmap.data.preprocess.PreprocessConfig.from_dict",
                          "d": pcfg},
        "predictions": "$@output_dir + '/predictions.csv'",
        "run": ["$predict_with_model(@network, @preprocessing, @dataset_dir, "
                "@predictions, organ=@organ)"],
    }


def _card(model_dir: Path, doc: dict[str, Any]) -> str:
    card = model_dir / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else \
        f"# medmap {doc.get('model_type')}\n"
    return text.rstrip() + """

## Run this MONAI bundle

Needs `pip install medmap` (which brings MONAI); no other code. On a case folder (one volume
per sequence named after it, e.g. `T2WI.nii.gz`, plus the masks the preprocessing names) or a
medmap manifest:

```bash
python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
    --dataset_dir /path/to/case --output_dir preds
```

`preds/predictions.csv` holds one row per case with a probability per class, the same as
`medmap predict` on the model folder this bundle was exported from. Weights are safetensors
(`models/model.safetensors`); `configs/inference.json` builds the network from medmap's own
classes.
"""


def export_monai_bundle(model: str | Path, out_dir: str | Path, *,
                        overwrite: bool = False) -> Path:
    """Write the classifier in ``model`` (a model or run folder) as a MONAI bundle in
    ``out_dir``; returns ``out_dir``. See the module doc for the layout.

    Raises :class:`~medmap.config.UserError` when ``out_dir`` exists and is not empty (unless
    ``overwrite``) or the model is not a classifier a bundle can run (``csa_text: report``
    models read each case's reports and the text encoder).
    """
    from medmap.inference import load_classifier, resolve_model_dir
    from medmap.models.hub import CONFIG_NAME, WEIGHTS_NAME

    mdir = resolve_model_dir(model)
    lm = load_classifier(mdir)
    cfg, doc = lm.model.cfg, lm.doc
    if getattr(cfg, "csa_text", "knowledge") == "report":
        raise UserError(f"{mdir}: a csa_text 'report' model reads each case's reports through "
                        "the text encoder; a MONAI bundle of it is not supported. Export a "
                        "report-free model (csa_text knowledge, the default)")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: exists and is not empty; choose a new folder or pass "
                            "--overwrite")
        shutil.rmtree(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    (out / "docs").mkdir(exist_ok=True)
    pcfg = lm.preprocess.to_dict()
    shutil.copyfile(mdir / WEIGHTS_NAME, out / "models" / "model.safetensors")
    shutil.copyfile(mdir / CONFIG_NAME, out / "models" / CONFIG_NAME)
    meta = _metadata(doc, cfg, pcfg, _test_metrics(mdir))
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    (out / "configs" / "inference.json").write_text(
        json.dumps(_inference({**doc, "config": to_dict(cfg)}, pcfg), indent=2),
        encoding="utf-8")
    (out / "docs" / "README.md").write_text(_card(mdir, doc), encoding="utf-8")
    (out / "LICENSE").write_text("Apache License 2.0 (the medmap project's license); the "
                                 "weights carry the terms of the data they were trained on.\n",
                                 encoding="utf-8")
    return out
