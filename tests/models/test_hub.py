"""Model folders: the model card (README.md) written with every folder, and a folder whose
config.json no longer fits its weights refused with a clear ModelFolderError."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from medmap.data.manifest import Manifest
from medmap.data.preprocess import PreprocessConfig
from medmap.models.hub import (CARD_NAME, ModelFolderError, from_pretrained, git_commit,
                               save_pretrained, update_model_card)
from medmap.models.medmap import MedMAPClassifier, MedMAPConfig

MODS, CLASSES = ["T2WI", "C+A"], ["hepatic_cyst", "hemangioma", "HCC"]


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    model = MedMAPClassifier(MedMAPConfig.tiny(MODS, CLASSES, organ="liver"))
    return save_pretrained(model, tmp_path / "model", organ="liver",
                           preprocess=PreprocessConfig(spacing=None, size=(32, 32, 32)).to_dict(),
                           text_model={"name": "tiny-bert", "identity": "x"},
                           data_manifest="data/cases.jsonl", data_cases=42,
                           data_splits={"train": 30, "val": 4, "test": 8})


def test_save_pretrained_writes_a_model_card(folder):
    card = (folder / CARD_NAME).read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: medmap\n")          # Hugging Face front matter
    for text in ("`medmap_classifier`", "| organ | liver |",
                 "| classes | 3: hepatic_cyst, hemangioma, HCC |", "| modalities | 2: T2WI, C+A |",
                 "## Preprocessing", "| size | 32, 32, 32 |", "| orientation | RAS |",
                 "- manifest: `data/cases.jsonl`", "- cases: 42 (train 30, val 4, test 8)",
                 "| medmap version | 0.1.0 |", "`tiny-bert`", "## Evaluation",
                 "Not evaluated yet"):
        assert text in card, text
    commit = git_commit()
    assert (f"`{commit}`" if commit else "| git commit | not recorded |") in card
    # the card is for people: the folder still loads, config.json alone drives it
    model, doc = from_pretrained(folder)
    assert doc["data_cases"] == 42 and model.cfg.classes == CLASSES


def test_card_without_data_keys_reads_the_run_config(tmp_path, tiny_sim):
    """No data_* keys (a training stage that does not pass them yet): the card takes the
    manifest from the run folder's config.yaml; without one it says 'not recorded'."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"data:\n  manifest: {tiny_sim}\n  organ: liver\n")
    model = MedMAPClassifier(MedMAPConfig.tiny(MODS, CLASSES, organ="liver"))
    card = (save_pretrained(model, run / "model", organ="liver") / CARD_NAME).read_text()
    n = len(Manifest.load(tiny_sim).select(organ="liver"))
    assert f"- manifest: `{tiny_sim}`" in card and f"- cases: {n} (" in card
    assert "## Preprocessing\n\nNot recorded." in card
    bare = (save_pretrained(model, tmp_path / "bare") / CARD_NAME).read_text()
    assert "Not recorded (the model was saved without `data_manifest`)" in bare
    assert "| organ | liver |" in bare                     # from the architecture config


def test_update_model_card_replaces_its_own_block(folder):
    update_model_card(folder, "eval:test:abc", "### test\naccuracy 0.5")
    update_model_card(folder, "eval:val:def", "### val\naccuracy 0.6")
    update_model_card(folder, "eval:test:abc", "### test\naccuracy 0.7")
    card = (folder / CARD_NAME).read_text()
    assert "accuracy 0.5" not in card and card.count("accuracy 0.7") == 1
    assert "accuracy 0.6" in card and "Not evaluated yet" not in card
    assert card.index("### test") < card.index("### val")     # replaced in place
    (folder / CARD_NAME).unlink()                              # an older folder: card made first
    update_model_card(folder, "eval:test:abc", "### test\naccuracy 0.8")
    card = (folder / CARD_NAME).read_text()
    assert "| organ | liver |" in card and "accuracy 0.8" in card


def _edit_config(folder, tmp_path, edit) -> object:
    out = tmp_path / "edited"
    shutil.copytree(folder, out)
    doc = json.loads((out / "config.json").read_text())
    edit(doc)
    (out / "config.json").write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["config"]["conv_stream"].update(channels=[8, 16, 32]),
     r"does not match model\.safetensors: \d+ tensor\(s\) differ in shape \(conv_stream\.T2WI"),
    (lambda d: d["config"].update(embed_dim=48),
     r"does not match model\.safetensors: \d+ tensor\(s\) differ in shape"),
    (lambda d: d["config"].update(modalities=["T2WI", "C+A", "DWI"]),
     r"does not match model\.safetensors: .*modality_embed: weights \(2, 32\), config\.json "
     r"builds \(3, 32\).*not in the weights \(experts\.encoders\.DWI"),
    (lambda d: d["config"].update(encoder={"name": "cnn"}),
     r"tensor\(s\) of the architecture are not in the weights"),
    (lambda d: d["config"].update(embed_dim="wide"),
     r"'config' does not fit a 'medmap_classifier' model \(embed_dim"),
    (lambda d: d.update(model_type="medmap_clip"),
     r"holds a 'medmap_clip' model, expected 'medmap_classifier'"),
    (lambda d: d.update(model_type="resnet_9000"), r"unknown model_type 'resnet_9000'"),
    (lambda d: d["config"].update(classes=["a", "b"]),
     r"differ in shape \(class_prompts: .*head\.1\.weight: weights \(3, 32\), config\.json "
     r"builds \(2, 32\)"),
    (lambda d: d["config"].update(stats_head=True, region_intensity=False),
     r"'config' does not fit a 'medmap_classifier' model \(model\.stats_head reads .*or "
     r"model\.stats_head: false\)"),
], ids=["conv-width", "embed-dim", "modalities", "encoder", "bad-value", "type", "unknown-type",
                            "classes", "stats-head-alone"])
def test_edited_config_is_a_model_folder_error(folder, tmp_path, edit, match):
    bad = _edit_config(folder, tmp_path, edit)
    expect = None if "unknown" in match else "medmap_classifier"
    with pytest.raises(ModelFolderError, match=match) as e:
        from_pretrained(bad, expect_type=expect)
    msg = str(e.value)
    assert str(bad) in msg
    if "tensor" in match or "build" in match:
        assert "restore the config.json saved with these weights" in msg


def test_damaged_files_are_model_folder_errors(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match=r"config\.json: not valid JSON"):
        from_pretrained(bad)
    shutil.copy(folder / "config.json", bad / "config.json")
    raw = (folder / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: unreadable.*re-copy"):
        from_pretrained(bad)


def test_weights_holding_nan_are_refused_with_the_cause(folder, tmp_path):
    """A model folder written by a run that diverged (NaN weights: the demo's liver model on a
    CPU with broken bf16 kernels) is refused when loaded, naming the tensor and the fix, instead
    of predicting NaN probabilities that failed later inside scikit-learn."""
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan"
    shutil.copytree(folder, bad)
    state = load_file(str(bad / "model.safetensors"))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[3]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ModelFolderError, match=rf"1 weight tensor\(s\) hold NaN or inf "
                                               rf"\(first: {re.escape(name)}\).*diverged.*"
                                               r"precision 32-true"):
        from_pretrained(bad)
    from_pretrained(folder)           # the intact folder still loads


def test_a_builder_refusing_the_config_is_a_model_folder_error(tmp_path):
    """A model type whose builder rejects the stored config (e.g. buffer shapes that depend on
    the saved state) gives the same clear error, naming the builder's complaint."""
    from dataclasses import dataclass

    from medmap.models.hub import register_model

    @dataclass
    class PickyConfig:
        width: int = 4

    def build(cfg, state):
        if state["w"].shape[0] != cfg.width:
            raise ValueError(f"w must have {cfg.width} rows")
        return Picky(cfg)

    @register_model("test_picky", PickyConfig, build)
    class Picky(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            self.w = torch.nn.Parameter(torch.zeros(cfg.width))

    out = save_pretrained(Picky(PickyConfig()), tmp_path / "picky")
    doc = json.loads((out / "config.json").read_text())
    doc["config"]["width"] = 5
    (out / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFolderError, match=r"config\.json does not build a 'test_picky' "
                                               r"model that fits the weights \(ValueError: w "
                                               r"must have 5 rows\)"):
        from_pretrained(out)
