"""Zero-shot classification: prompt files, perfect embeddings give AUC 1, real tiny model runs."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]


def test_prompt_yaml_matches_the_builtin_default_and_expands():
    import yaml

    from medmap.data.vocab import ORGANS
    from medmap.downstream.zeroshot import default_prompts, expand_prompts, load_prompts

    doc = load_prompts(REPO / "configs" / "zeroshot-prompts.yaml")
    assert doc == default_prompts() == yaml.safe_load(yaml.safe_dump(default_prompts()))
    for organ, spec in ORGANS.items():
        sets = expand_prompts(doc, organ)
        assert list(sets) == list(spec.classes)
        for c, s in sets.items():
            assert len(s["positive"]) >= 4 and len(s["negative"]) >= 4, c
            assert not set(s["positive"]) & set(s["negative"])


def test_prompt_file_errors_name_the_problem(tmp_path):
    from medmap.downstream.zeroshot import expand_prompts, load_prompts

    with pytest.raises(ValueError, match="organs"):
        load_prompts({"liver": {}})
    with pytest.raises(ValueError, match="no prompts for organ 'brain'"):
        expand_prompts({"organs": {"liver": {}}}, "brain")
    with pytest.raises(ValueError, match="needs positive and negative"):
        expand_prompts({"organs": {"brain": {"positive_templates": ["a {finding}"]}}}, "brain")
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.yaml")


def test_perfect_embeddings_give_auc_one():
    from medmap.downstream.zeroshot import zeroshot_from_embeddings

    rng = np.random.default_rng(0)
    K, d = 3, 8
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0][:K]       # orthonormal class vectors
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    images = basis[labels] + 0.05 * rng.standard_normal((len(labels), d))
    res = zeroshot_from_embeddings(images, labels, basis, -basis, ["a", "b", "c"])
    assert res["macro_auc"] == 1.0
    assert all(v == 1.0 for v in res["per_class_auc"].values())
    assert res["multiclass"]["accuracy"] == 1.0
    assert res["scores"].shape == (7, 3)


class _OneHotModel(nn.Module):
    """A VisionLanguageModel whose image embedding is the one-hot class stored in the voxels."""

    def __init__(self, k: int):
        super().__init__()
        self.cfg = SimpleNamespace(modalities=["T2WI", "C+A"], embed_dim=k, text_dim=k,
                                   encoder=None)
        self.experts = None
        self.text_proj = nn.Linear(k, k)
        with torch.no_grad():
            self.text_proj.weight.copy_(torch.eye(k))
            self.text_proj.bias.zero_()
        self.k = k

    def encode_image(self, images, modality_index):
        return nn.functional.one_hot(images[:, 0, 0, 0, 0].long(), self.k).float()


def test_zeroshot_end_to_end_with_a_perfect_model(tiny_sim, tmp_path):
    """Images and prompts are embedded perfectly: every per-class AUC is 1, accuracy 1."""
    from medmap.data.manifest import Manifest
    from medmap.data.preprocess import PreprocessConfig
    from medmap.data.vocab import LIVER
    from medmap.downstream.vlm import LoadedVLM, VisionLanguageModel
    from medmap.downstream.zeroshot import default_prompts, expand_prompts, zeroshot

    K = len(LIVER.classes)
    model = _OneHotModel(K)
    assert isinstance(model, VisionLanguageModel)
    cases = Manifest.load(tiny_sim).resolved()
    label_of = {p: c.label_index for c in cases for p in c.modalities.values()}

    class Loader:
        def get(self, path, modality):
            return torch.full((1, 32, 32, 32), float(label_of[path]))

    sets = expand_prompts(default_prompts(), "liver")
    vec = {}
    for k, c in enumerate(LIVER.classes):
        for t in sets[c]["positive"]:
            vec[t] = torch.eye(K)[k]
        for t in sets[c]["negative"]:
            vec[t] = -torch.eye(K)[k]

    class Text:
        def encode(self, texts):
            return torch.stack([vec[t] for t in texts])

    vlm = LoadedVLM(model, PreprocessConfig(spacing=None, size=(32, 32, 32)), "liver")
    res = zeroshot(vlm, tiny_sim, split=None, out_dir=tmp_path, text_encoder=Text(),
                   loader=Loader())
    assert res["n"] == sum(c.organ == "liver" for c in cases)
    assert res["macro_auc"] == 1.0
    assert all(v in (1.0, None) for v in res["per_class_auc"].values())
    assert res["multiclass"]["accuracy"] == 1.0
    saved = json.loads((tmp_path / "zeroshot.json").read_text())
    assert saved["macro_auc"] == 1.0 and "prompts" in saved
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == res["n"] + 1


def test_zeroshot_on_a_pretrained_model(vlm, tiny_sim, vcache):
    from medmap.downstream.vlm import VisionLanguageModel
    from medmap.downstream.zeroshot import zeroshot

    assert isinstance(vlm.model, VisionLanguageModel)
    res = zeroshot(vlm, tiny_sim, split="train", cache_dir=vcache)
    assert res["n"] > 0 and res["organ"] == "liver"
    assert res["macro_auc"] is None or 0.0 <= res["macro_auc"] <= 1.0
    assert 0.0 <= res["multiclass"]["accuracy"] <= 1.0
    assert set(res["n_prompts"]) == set(res["classes"])
