import pytest
import torch

from medmap.losses.contrastive import modality_contrastive_loss
from medmap.losses.medmap import medmap_loss
from medmap.models.encoders import CNNConfig
from medmap.models.hub import from_pretrained, save_pretrained
from medmap.models.medmap import (
    MedMAPClassifier,
    MedMAPConfig,
    ModalityAwareCLIP,
    load_pretrained_experts,
)
from medmap.text.encoder import FrozenTextEncoder
from medmap.text.testing import build_tiny_bert

MODS = ["T2WI", "C+A", "C+V"]
CLASSES = ["hepatic_cyst", "hepatocellular_carcinoma"]


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    return FrozenTextEncoder(build_tiny_bert(tmp_path_factory.mktemp("bert")))


def _cfg(**kw):
    return MedMAPConfig.tiny(MODS, CLASSES, **kw)


def test_every_trainable_parameter_gets_a_gradient_and_text_encoder_none(text_encoder):
    torch.manual_seed(0)
    prompts = text_encoder.encode([f"{c} on {m}" for m in MODS for c in CLASSES])
    model = MedMAPClassifier(_cfg(), prompts.view(len(MODS), len(CLASSES), -1))
    images = torch.randn(3, 3, 1, 32, 32, 32)
    present = torch.ones(3, 3, dtype=torch.bool)
    reports = text_encoder.encode(["cyst in segment vii", "mass with washout", "small cyst"])
    out = model(images, present)
    terms = medmap_loss(out["logits"], torch.tensor([0, 1, 0]), out["fusion"],
                        model.text_features(reports), epoch=1, max_epochs=4)
    terms["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(not p.requires_grad and p.grad is None for p in text_encoder.model.parameters())


def test_pretraining_model_gradients_reach_every_expert(text_encoder):
    model = ModalityAwareCLIP(_cfg())
    images = torch.randn(6, 1, 32, 32, 32)
    mod = torch.tensor([0, 0, 1, 1, 2, 2])
    text = text_encoder.encode([f"report {i}" for i in range(6)])
    out = model(images, mod, text)
    loss = modality_contrastive_loss(out["image_features"], out["text_features"], out["modality"],
                                     out["logit_scale"])["contrastive_loss"]
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert model.experts.encoders["T2WI"] is not model.experts.encoders["C+A"]


def test_shared_encoder_switch():
    model = ModalityAwareCLIP(_cfg(shared_encoder=True))
    assert list(model.experts.encoders) == ["shared"]
    out = model(torch.randn(2, 1, 32, 32, 32), torch.tensor([0, 2]), torch.randn(2, 32))
    assert out["image_features"].shape == (2, 32)


@pytest.mark.parametrize("pool", ["mean", "concat"])
def test_missing_modalities_are_ignored_not_zero_filled(pool):
    torch.manual_seed(0)
    model = MedMAPClassifier(_cfg(modality_pool=pool), torch.randn(3, 2, 32)).eval()
    images = torch.randn(2, 3, 1, 32, 32, 32)
    present = torch.tensor([[True, False, True], [True, True, True]])
    a = model(images, present)["probs"]
    images2 = images.clone()
    images2[0, 1] = torch.randn(1, 32, 32, 32) * 100  # whatever sits in an absent slot
    b = model(images2, present)["probs"]
    assert torch.allclose(a[0], b[0], atol=1e-6)
    # a present modality does matter
    images3 = images.clone()
    images3[0, 0] += 5
    assert not torch.allclose(model(images3, present)["probs"][0], a[0])
    with pytest.raises(ValueError, match="no modality present"):
        model(images, torch.tensor([[False, False, False], [True, True, True]]))


@pytest.mark.parametrize("csa_text, use_conv", [("knowledge", True), ("report", True),
                                                ("modality", True), ("none", False)])
def test_a_case_prediction_does_not_depend_on_its_batch(csa_text, use_conv):
    """The shared modules (text guidance, CCT, pooling, merge) run once over every present
    (case, sequence) pair stacked on the batch axis: each pair must still meet its own case's
    mask, report and sequence. Alone or beside cases missing other sequences, same output."""
    torch.manual_seed(0)
    cfg = _cfg(encoder=CNNConfig(channels=(8, 16), norm="batch"), csa_text=csa_text,
               pooling="mask", region_scales=[0, 1], region_intensity=True, stats_head=True,
               region_shape=True, mask_channel=use_conv, modality_pool="concat",
               use_conv=use_conv)        # without the conv stream CCT reads the class text
    model = MedMAPClassifier(cfg, torch.randn(3, 2, 32), torch.randn(3, 32))
    with torch.no_grad():                                  # non-trivial running statistics
        for norm in [*model.intensity_norm.values(), model.shape_norm]:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
        model.stats_head.weight.normal_()
        if csa_text in ("knowledge", "report"):            # the gate starts at identity
            model.guidance.gate.weight.normal_(std=0.5)
    model.eval()
    images = torch.randn(3, 3, 1, 32, 32, 32)
    present = torch.tensor([[True, False, True], [True, True, True], [False, True, True]])
    mask = torch.zeros(3, 1, 32, 32, 32)
    for b, (lo, hi) in enumerate([(4, 12), (10, 26), (16, 30)]):
        mask[b, :, lo:hi, lo:hi, lo:hi] = 1
    reports, rmask = torch.randn(3, 3, 32), present.clone()
    rmask[1, 2] = False                                    # a sequence without its report
    kw = dict(reports=reports, report_mask=rmask) if csa_text == "report" else {}
    batch = model(images, present, lesion_mask=mask, **kw)["logits"]
    for b in range(3):
        one = {k: v[b:b + 1] for k, v in kw.items()}
        alone = model(images[b:b + 1], present[b:b + 1], lesion_mask=mask[b:b + 1], **one)
        assert torch.allclose(batch[b], alone["logits"][0], atol=1e-5), (csa_text, b)
    # and what each pair meets is its own: another case's mask changes only that case
    mask2 = mask.clone()
    mask2[2] = 0
    mask2[2, :, 2:8, 2:8, 2:8] = 1
    moved = model(images, present, lesion_mask=mask2, **kw)["logits"]
    assert torch.allclose(moved[:2], batch[:2], atol=1e-5)
    assert not torch.allclose(moved[2], batch[2], atol=1e-3)


def test_concat_pool_fills_an_absent_modality_with_its_learned_slot():
    torch.manual_seed(0)
    model = MedMAPClassifier(_cfg(modality_pool="concat"), torch.randn(3, 2, 32))
    present = torch.tensor([[True, False, True], [True, False, True]])
    model(torch.randn(2, 3, 1, 32, 32, 32), present)["logits"].sum().backward()
    grad = model.missing_embed.grad                       # (M, d): only the absent slot learns
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    assert model.concat_proj.in_features == 3 * model.cfg.embed_dim
    assert not hasattr(MedMAPClassifier(_cfg(), torch.randn(3, 2, 32)), "missing_embed")


@pytest.mark.parametrize("row", ["baseline", "+CCT", "+CSA", "modality", "report"])
def test_table2_switches_build_and_run(row):
    flags = {"baseline": dict(use_conv=False, use_cct=False, csa_text="none"),
             "+CCT": dict(use_conv=False, use_cct=True, csa_text="none"),
             "+CSA": dict(use_conv=True, use_cct=True, csa_text="knowledge"),
             "modality": dict(use_conv=True, use_cct=True, csa_text="modality"),
             "report": dict(use_conv=True, use_cct=True, csa_text="report")}[row]
    model = MedMAPClassifier(_cfg(**flags), torch.randn(3, 2, 32))
    assert hasattr(model, "conv_stream") == flags["use_conv"]
    assert hasattr(model, "cct") == flags["use_cct"]
    assert hasattr(model, "guidance") == (flags["csa_text"] in ("knowledge", "report"))
    x, present = torch.randn(2, 3, 1, 32, 32, 32), torch.ones(2, 3, dtype=torch.bool)
    kw = {}
    if row == "report":
        kw = dict(reports=torch.randn(2, 3, 32), report_mask=torch.ones(2, 3, dtype=torch.bool))
        with pytest.raises(ValueError, match="reads reports at inference"):
            model(x, present)
    assert model(x, present, **kw)["logits"].shape == (2, 2)


def test_modality_control_uses_the_modality_prompt():
    torch.manual_seed(0)
    model = MedMAPClassifier(_cfg(csa_text="modality"), modality_prompts=torch.randn(3, 32)).eval()
    x, present = torch.randn(1, 3, 1, 32, 32, 32), torch.ones(1, 3, dtype=torch.bool)
    a = model(x, present)["logits"]
    model.modality_prompts.copy_(torch.randn(3, 32))
    assert not torch.allclose(model(x, present)["logits"], a)


def test_csa_is_the_identity_at_initialisation():
    torch.manual_seed(0)
    model = MedMAPClassifier(_cfg(), torch.randn(3, 2, 32)).eval()
    f = torch.randn(4, 8, 32)
    f_vt, text_vec, attn = model.text_guidance(f, 0)
    assert torch.allclose(f_vt, f, atol=1e-6)
    assert attn.shape == (4, 8, 2) and torch.allclose(attn.sum(-1), torch.ones(4, 8))


def test_csa_text_vector_depends_on_the_case():
    """Two cases of one modality get different attended text vectors (not a per-modality
    constant), at initialisation already."""
    torch.manual_seed(0)
    model = MedMAPClassifier(_cfg(), torch.randn(3, 2, 32)).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        tokens = model.experts.encode(x, "C+A")                         # (2, N, d)
        _, text_vec, attn = model.text_guidance(tokens, 1)
    assert not torch.allclose(text_vec[0], text_vec[1], atol=1e-4)
    assert not torch.allclose(attn[0], attn[1], atol=1e-4)


def test_save_and_load_pretrained_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = MedMAPClassifier(_cfg(), torch.randn(3, 2, 32)).eval()
    save_pretrained(model, tmp_path / "m", preprocess={"size": [32, 32, 32]})
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded, doc = from_pretrained(tmp_path / "m")
    assert doc["config"]["modalities"] == MODS and doc["config"]["classes"] == CLASSES
    assert doc["preprocess"] == {"size": [32, 32, 32]} and "medmap_version" in doc
    x, present = torch.randn(2, 3, 1, 32, 32, 32), torch.ones(2, 3, dtype=torch.bool)
    assert torch.allclose(model(x, present)["logits"], loaded(x, present)["logits"], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not a medmap model folder"):
        from_pretrained(tmp_path / "nothing")


def test_load_pretrained_experts_copies_and_refuses_mismatch(tmp_path):
    torch.manual_seed(0)
    clip = ModalityAwareCLIP(_cfg())
    save_pretrained(clip, tmp_path / "pre")
    model = MedMAPClassifier(_cfg(), torch.randn(3, 2, 32))
    load_pretrained_experts(model, str(tmp_path / "pre"))
    for k in MODS:
        a = clip.experts.encoders[k].state_dict()
        b = model.experts.encoders[k].state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert torch.equal(model.text_proj.weight, clip.text_proj.weight)

    more = MedMAPClassifier(MedMAPConfig.tiny(MODS + ["DWI"], CLASSES), torch.randn(4, 2, 32))
    with pytest.raises(ValueError, match=r"no pre-trained expert for modalities \['DWI'\]"):
        load_pretrained_experts(more, str(tmp_path / "pre"))
    other = MedMAPClassifier(_cfg(encoder=CNNConfig(channels=(8, 16))),
                             torch.randn(3, 2, 32))
    with pytest.raises(ValueError, match="pre-trained encoder .* differs"):
        load_pretrained_experts(other, str(tmp_path / "pre"))
    save_pretrained(model, tmp_path / "cls")
    with pytest.raises(ValueError, match="expected 'medmap_clip'"):
        load_pretrained_experts(model, str(tmp_path / "cls"))
    with pytest.raises(FileNotFoundError):
        load_pretrained_experts(model, str(tmp_path / "absent"))


def test_per_sequence_heads_get_gradients_only_when_switched_on():
    from medmap.losses.medmap import MedMAPLoss
    from medmap.models.medmap import MedMAPLossConfig

    torch.manual_seed(0)
    plain = MedMAPClassifier(_cfg(csa_text="none"))
    assert not hasattr(plain, "modality_heads") and "modality_logits" not in plain(
        torch.randn(2, 3, 1, 32, 32, 32), torch.ones(2, 3, dtype=torch.bool))
    model = MedMAPClassifier(_cfg(csa_text="none", losses=MedMAPLossConfig(modality_weight=1.0)))
    present = torch.tensor([[True, False, True], [True, True, True]])
    out = model(torch.randn(2, 3, 1, 32, 32, 32), present)
    assert out["modality_logits"].shape == (2, 3, len(CLASSES))
    terms = MedMAPLoss(4, cls_loss="ce", weighting="constant", kl_weight=0.0,
                       modality_weight=1.0)(**out, labels=torch.tensor([0, 1]), epoch=0)
    terms["loss"].backward()
    heads = dict(model.modality_heads.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.values())
