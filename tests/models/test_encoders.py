from types import SimpleNamespace

import pytest
import torch

from medmap.models.encoders import SwinConfig, build_encoder, tiny_encoder_config


@pytest.mark.parametrize("name", ["swin", "resnet", "cnn"])
def test_encoder_interface(name):
    enc = build_encoder(tiny_encoder_config(name))
    out = enc(torch.randn(2, 1, 32, 32, 32))
    B, N, C = out.tokens.shape
    assert B == 2 and C == enc.out_dim and N == out.feature_map[0, 0].numel()
    assert out.pooled.shape == (2, enc.out_dim)
    assert torch.allclose(out.pooled, out.tokens.mean(1))
    out.pooled.sum().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


def test_swin_matches_monai_forward_at_full_depth():
    torch.manual_seed(0)
    enc = build_encoder(SwinConfig(feature_size=12, window_size=2))
    x = torch.randn(1, 1, 32, 32, 32)
    assert torch.allclose(enc.feature_map(x), enc.swin(x)[4], atol=1e-6)


def test_clear_errors():
    enc = build_encoder(tiny_encoder_config("swin"))
    with pytest.raises(ValueError, match="divisible by 32.*preprocess.size"):
        enc(torch.randn(1, 1, 30, 32, 32))
    with pytest.raises(ValueError, match=r"expects \(B, C, D, H, W\)"):
        enc(torch.randn(1, 32, 32, 32))
    with pytest.raises(ValueError, match="unknown encoder 'vit'; registered: swin, resnet, cnn"):
        build_encoder(SimpleNamespace(name="vit"))


@pytest.mark.parametrize("name", ["cnn", "swin", "resnet"])
def test_feature_maps_every_stage_finest_first(name):
    """The multi-scale interface (timm's features_only): each stage halves the side, the
    channels match ``feature_channels`` and the last map is ``feature_map``'s."""
    from medmap.models.encoders import build_encoder, tiny_encoder_config

    enc = build_encoder(tiny_encoder_config(name)).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    maps = enc.feature_maps(x)
    assert [m.shape[1] for m in maps] == enc.feature_channels
    sides = [m.shape[-1] for m in maps]
    assert all(a >= b for a, b in zip(sides, sides[1:])) and sides[0] < 32
    assert torch.allclose(maps[-1], enc.feature_map(x), atol=1e-5)
