"""Zero-shot classification (CLIP-standard softmax over class prompts) and CT-VocabFine."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn


class _OneHotModel(nn.Module):
    """A VisionLanguageModel whose image embedding is the one-hot class stored in the voxels."""

    def __init__(self, k: int, modalities: list[str]):
        super().__init__()
        self.cfg = SimpleNamespace(modalities=modalities, embed_dim=k, text_dim=k, encoder=None)
        self.experts = None
        self.text_proj = nn.Linear(k, k)
        with torch.no_grad():
            self.text_proj.weight.copy_(torch.eye(k))
            self.text_proj.bias.zero_()
        self.k = k

    def encode_image(self, images, modality_index):
        return nn.functional.one_hot(images[:, 0, 0, 0, 0].long(), self.k).float()


def test_image_embedding_equal_to_its_class_prompt_scores_auc_one(tiny_sim, tmp_path):
    from medmap.data.manifest import Manifest
    from medmap.data.preprocess import PreprocessConfig
    from medmap.data.vocab import LIVER
    from medmap.downstream.vlm import LoadedVLM, VisionLanguageModel
    from medmap.downstream.zeroshot import zeroshot
    from medmap.text.knowledge import load_class_knowledge

    K, mods = len(LIVER.classes), ["T2WI", "C+A"]
    model = _OneHotModel(K, mods)
    assert isinstance(model, VisionLanguageModel)
    cases = Manifest.load(tiny_sim).resolved()
    label_of = {p: c.label_index for c in cases for p in c.modalities.values()}

    class Loader:
        def get(self, path, modality):
            return torch.full((1, 32, 32, 32), float(label_of[path]))

    kn = load_class_knowledge(organ="liver")
    vec = {}
    for k, c in enumerate(LIVER.classes):           # every prompt of class k embeds as e_k
        for t in [s for m in mods for s in kn.appearance_prompts(m)[c]] + kn.name_prompts()[c]:
            vec[t] = torch.eye(K)[k]
        for t in kn.negative_prompts()[c]:
            vec[t] = -torch.eye(K)[k]

    class Text:
        def encode(self, texts):
            return torch.stack([vec[t] for t in texts])

    vlm = LoadedVLM(model, PreprocessConfig(spacing=None, size=(32, 32, 32)), "liver")
    res = zeroshot(vlm, tiny_sim, split=None, out_dir=tmp_path, text_encoder=Text(),
                   loader=Loader(), score="posneg", n_boot=50)
    assert res["n"] == sum(c.organ == "liver" for c in cases)
    assert res["auc"] == 1.0 and res["accuracy"] == 1.0
    assert res["appearance_auc"] == res["names_auc"] == 1.0
    assert all(v in (1.0, None) for v in res["per_class_auc"].values())
    assert res["chance_accuracy"] == pytest.approx(1 / K)
    saved = json.loads((tmp_path / "zeroshot.json").read_text())
    assert saved["auc"] == 1.0 and "prompts_used" in saved and saved["ci"][0] <= 1.0
    # the control: random prompt embeddings of the same norm carry no class -> near chance
    ctrl = zeroshot(vlm, tiny_sim, split=None, text_encoder=Text(), loader=Loader(),
                    language="random", n_boot=50)
    assert ctrl["language"] == "random" and ctrl["accuracy"] < 0.6
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == res["n"] + 1


def test_zeroshot_on_a_pretrained_model(vlm, tiny_sim, vcache):
    from medmap.downstream.zeroshot import zeroshot

    res = zeroshot(vlm, tiny_sim, split="train", cache_dir=vcache, n_boot=50)
    assert res["n"] > 0 and res["organ"] == "liver"
    assert res["auc"] is None or 0.0 <= res["auc"] <= 1.0
    assert 0.0 <= res["accuracy"] <= 1.0
    assert set(res["per_modality_auc"]) == {"T2WI", "C+A"}
    assert np.allclose(np.asarray(res["probs"]).sum(1), 1.0)


def test_chance_levels():
    from medmap.downstream.retrieval import chance_at_k, per_sequence_summary, retrieval_metrics

    assert chance_at_k(40, 5) == 5 / 40 and chance_at_k(3, 5) == 1.0 and chance_at_k(0, 5) is None
    rng = np.random.default_rng(0)
    r5 = [retrieval_metrics(rng.standard_normal((40, 40)), ks=(5,))["report_to_volume"]["R@5"]
          for _ in range(300)]
    assert np.mean(r5) == pytest.approx(5 / 40, abs=0.01)          # random ranking = chance
    m = retrieval_metrics(rng.standard_normal((20, 20)), ks=(1, 10))
    assert m["report_to_volume"]["chance@10"] == 0.5 and m["volume_to_report"]["chance@1"] == 0.05
    summ = per_sequence_summary({"A": m, "B": retrieval_metrics(np.eye(10), ks=(1, 10))}, (1, 10))
    assert summ["gallery"] == 15.0
    assert summ["report_to_volume"]["chance@1"] == pytest.approx((1 / 20 + 1 / 10) / 2)


def _liver_set(root, n_per_class: dict[str, int], seed: int):
    """Synthetic 16^3 liver cases: class k is a bright cube of side k + 2 in noise."""
    from medmap.data.manifest import Case
    from medmap.data.vocab import LIVER

    rng = np.random.default_rng(seed)
    cases = []
    for split, n in n_per_class.items():
        for i in range(n * len(LIVER.classes)):
            k = i % len(LIVER.classes)
            cid = f"{split}{i}"
            (root / cid).mkdir(parents=True)
            paths = {}
            for mod in ("T2WI", "C+A"):
                a = 0.2 * rng.standard_normal((16, 16, 16)).astype(np.float32)
                lo = 8 - (k + 2) // 2
                a[lo:lo + k + 2, lo:lo + k + 2, lo:lo + k + 2] += 2.0
                nib.save(nib.Nifti1Image(a, np.eye(4)), str(root / cid / f"{mod}.nii.gz"))
                paths[mod] = str(root / cid / f"{mod}.nii.gz")
            cases.append(Case(cid, "liver", split, LIVER.classes[k], paths))
    return cases


def test_vocabfine_raises_auc_on_a_tiny_separable_set(tmp_path):
    from medmap.data.manifest import Manifest
    from medmap.data.preprocess import PreprocessConfig
    from medmap.downstream.vlm import LoadedVLM
    from medmap.downstream.vocabfine import vocabfine
    from medmap.models.encoders import CNNConfig
    from medmap.models.medmap import MedMAPConfig, ModalityAwareCLIP

    manifest = Manifest(_liver_set(tmp_path / "data", {"train": 4, "test": 4}, 0))
    manifest.save(tmp_path / "data" / "m.jsonl")
    torch.manual_seed(0)
    cfg = MedMAPConfig(modalities=["T2WI", "C+A"], organ="liver",
                       encoder=CNNConfig(channels=(8, 16)), embed_dim=16, text_dim=16)
    vlm = LoadedVLM(ModalityAwareCLIP(cfg).eval(), PreprocessConfig(spacing=None,
                                                                     size=(16, 16, 16)), "liver")

    class Text:   # a fixed random embedding per prompt: no language at all before VocabFine
        def encode(self, texts):
            return torch.stack([torch.from_numpy(np.random.default_rng(
                int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(16)).float()
                for t in texts])

    before = vlm.model.text_proj.weight.detach().clone()
    res = vocabfine(vlm, tmp_path / "data" / "m.jsonl", n_per_class=4, text_encoder=Text(),
                    epochs=200, lr=3e-3, out_dir=tmp_path / "out", n_boot=50)
    assert res["n_train_cases"] == 28 and res["train_loss"][-1] < 0.5 * res["train_loss"][0]
    b, a = res["before"]["auc"], res["after"]["auc"]
    assert a >= 0.85 and a > b + 0.15, (b, a)
    assert json.loads((tmp_path / "out" / "vocabfine.json").read_text())["after"]["auc"] == \
        res["after"]["auc"]
    assert torch.equal(vlm.model.text_proj.weight, before)          # the caller's model is untouched
    with pytest.raises(ValueError, match="N >= 1"):
        vocabfine(vlm, tmp_path / "data" / "m.jsonl", n_per_class=0, text_encoder=Text())
