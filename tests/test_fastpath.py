"""The fast inference path (medmap.fastpath) gives the eager model's predictions."""

import copy

import pytest
import torch

from medmap.fastpath import FastClassifier, fast_classifier
from medmap.models.encoders import SwinConfig
from medmap.models.medmap import MedMAPClassifier, MedMAPConfig

MODS = ["T2WI", "DWI", "C+A"]


def _model(seed: int = 0) -> MedMAPClassifier:
    # two blocks per stage (shifted windows + their masks) and a window that does not divide
    # the token grid (16 % 3: padded windows), like the paper's window 7 on 64^3 tokens
    torch.manual_seed(seed)
    cfg = MedMAPConfig.tiny(modalities=MODS, classes=["a", "b", "c", "d"],
                            encoder=SwinConfig(feature_size=12, depths=(2, 2), num_heads=(2, 4),
                                               window_size=3, out_stage=2))
    model = MedMAPClassifier(cfg)
    with torch.no_grad():       # trained-looking weights: random prompts, larger logits
        for name, buf in model.named_buffers():
            if "prompt" in name and buf.is_floating_point():
                buf.copy_(torch.randn(buf.shape))
        for p in model.head.parameters():
            p.mul_(20)
        for mod in model.modules():
            if hasattr(mod, "relative_position_bias_table"):
                mod.relative_position_bias_table.normal_(0, 0.5)
    return model.eval()


def _inputs(batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, len(MODS), 1, 32, 32, 32, generator=g)
    present = torch.ones(batch, len(MODS), dtype=torch.bool)
    return x, present


@pytest.mark.parametrize("batch,missing", [(1, None), (2, None), (3, 1)])
def test_fast_path_matches_eager(batch, missing):
    model = _model()
    x, present = _inputs(batch)
    if missing is not None:
        present[0, missing] = False
        x[0, missing] = 0
    with torch.no_grad():
        ref = model(x, present)
    fast = fast_classifier(copy.deepcopy(model))
    assert fast.fused_attention == 4 * len(MODS)      # 2 stages x 2 blocks per expert
    out = fast(x, present)
    dprob = (out["probs"] - ref["probs"]).abs().max().item()
    assert dprob <= 1e-3                                # the bound for an fp32 path
    torch.testing.assert_close(out["logits"], ref["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["fusion"], ref["fusion"], rtol=1e-4, atol=1e-4)
    assert ref["probs"].std() > 0.05                    # the check is not on flat outputs


def test_fused_attention_matches_monai_on_every_block():
    """Each fused window attention equals MONAI's own forward, shifted or not."""
    from monai.networks.nets import swin_unetr

    model = _model()
    calls, hooks = [], []
    for mod in model.modules():
        if isinstance(mod, swin_unetr.WindowAttention):
            hooks.append(mod.register_forward_hook(
                lambda m, args, kw, out: calls.append((m, args[0], kw.get("mask", (*args, None)[1]),
                                                       out)), with_kwargs=True))
    x, present = _inputs()
    with torch.no_grad():
        model(x, present)
    for h in hooks:
        h.remove()
    assert any(mask is not None for _, _, mask, _ in calls)     # shifted windows were seen
    assert any(mask is None for _, _, mask, _ in calls)
    fast_classifier(model)
    for mod, xw, mask, ref in calls:
        with torch.inference_mode():
            torch.testing.assert_close(mod(xw, mask), ref, rtol=1e-5, atol=1e-5)


def test_gradients_still_take_the_eager_path():
    """Grad-CAM and training on a model that went through fast_classifier are unchanged."""
    model = _model()
    twin = copy.deepcopy(model)
    fast_classifier(twin)
    x, present = _inputs()
    outs = []
    for m in (model, twin):
        xx = x.clone().requires_grad_(True)
        m(xx, present)["logits"][0, 1].backward()
        outs.append(xx.grad)
    torch.testing.assert_close(outs[0], outs[1])
    assert model.state_dict().keys() == twin.state_dict().keys()


def test_masks_are_shared_only_during_a_call():
    from monai.networks.nets import swin_unetr

    original = swin_unetr.compute_mask
    fast = fast_classifier(_model())
    fast(*_inputs())
    assert swin_unetr.compute_mask is original


def test_channels_last_and_bf16_paths():
    model = _model()
    x, present = _inputs()
    with torch.no_grad():
        ref = model(x, present)["probs"]
    out = fast_classifier(copy.deepcopy(model), channels_last=True)(x, present)["probs"]
    assert (out - ref).abs().max() <= 1e-3
    bf = fast_classifier(copy.deepcopy(model), precision="bf16")
    assert "bf16" in bf.describe()
    out = bf(x, present)
    assert out["probs"].dtype == torch.float32
    assert (out["probs"] - ref).abs().max() < 0.25      # bf16: reported, not held to 1e-3
    with pytest.raises(ValueError, match="precision"):
        FastClassifier(model, precision="fp16")
