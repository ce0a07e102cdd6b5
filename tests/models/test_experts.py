"""ModalityExperts: expert-wise activation checkpointing changes memory, never numerics."""

import dataclasses

import pytest
import torch

from medmap.models.encoders import CNNConfig, SwinConfig, tiny_encoder_config
from medmap.models.experts import ModalityExperts

MODS = ["T2WI", "C+A", "C+V"]


def _swin(use_checkpoint: bool = False) -> SwinConfig:
    # two blocks per stage, so the shifted-window blocks (and their masks) are exercised
    return SwinConfig(feature_size=12, depths=(2, 2), num_heads=(2, 4), window_size=3,
                      out_stage=2, use_checkpoint=use_checkpoint)


def _pair(enc_cfg, ckpt_cfg=None):
    torch.manual_seed(0)
    plain = ModalityExperts(MODS, enc_cfg, embed_dim=16, checkpoint=False)
    ckpt = ModalityExperts(MODS, ckpt_cfg or enc_cfg, embed_dim=16, checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    return plain.train(), ckpt.train()


def _loss_and_grads(experts: ModalityExperts, x: torch.Tensor):
    experts.zero_grad(set_to_none=True)
    outs = [experts.encode(x[:, i], m) for i, m in enumerate(MODS)]
    loss = sum((o ** 2).mean() + o.amax() for o in outs)
    loss.backward()
    return outs, {n: p.grad.clone() for n, p in experts.named_parameters()}


@pytest.mark.parametrize("name", ["swin", "cnn", "swin+block-checkpoint"])
def test_checkpoint_leaves_outputs_and_every_gradient_unchanged(name):
    if name == "cnn":
        plain, ckpt = _pair(CNNConfig(channels=(8, 16)))
    elif name == "swin":
        plain, ckpt = _pair(_swin())
    else:   # expert-wise on top of MONAI's per-block checkpointing, against neither
        plain, ckpt = _pair(_swin(), _swin(use_checkpoint=True))
    x = torch.randn(2, len(MODS), 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    out_a, g_a = _loss_and_grads(plain, x)
    out_b, g_b = _loss_and_grads(ckpt, x)
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert g_a.keys() == g_b.keys() and len(g_a) > 0
    for n in g_a:
        torch.testing.assert_close(g_a[n], g_b[n], rtol=1e-4, atol=1e-6, msg=n)
        assert g_a[n].abs().sum() > 0, f"{n}: no gradient reached it"


def test_checkpoint_keeps_only_the_expert_inputs():
    """With checkpointing, autograd saves for the backward pass far fewer bytes (one expert's
    input and output) than the encoders' activations."""
    def saved_bytes(experts: ModalityExperts) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        x = torch.randn(2, 1, 32, 32, 32)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = sum(experts.encode(x, m).sum() for m in MODS)
        out.backward()
        return total

    plain, ckpt = _pair(tiny_encoder_config("swin"))
    assert saved_bytes(ckpt) < saved_bytes(plain) / 5


def test_checkpoint_is_training_only():
    plain, ckpt = _pair(CNNConfig(channels=(8, 16)))
    ckpt.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval().encode(x, "C+A"), ckpt.encode(x, "C+A"))
    assert ckpt.encode(x, "C+A").grad_fn is not None     # eval + grad: plain autograd path


def test_classifier_gradients_with_expert_checkpoint():
    """The config switch, end to end: MedMAPConfig.expert_checkpoint through the classifier."""
    from medmap.models.medmap import MedMAPClassifier, MedMAPConfig

    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(modalities=["T2WI", "C+A"], classes=["a", "b", "c"])
    plain = MedMAPClassifier(cfg).train()
    ckpt = MedMAPClassifier(dataclasses.replace(cfg, expert_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.experts.checkpoint and not plain.experts.checkpoint
    x = torch.randn(2, 2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    present = torch.tensor([[True, True], [True, False]])
    grads = []
    for model in (plain, ckpt):
        model.zero_grad(set_to_none=True)
        out = model(x, present)
        torch.nn.functional.cross_entropy(out["logits"], torch.tensor([0, 2])).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(n.startswith("experts.encoders.") for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)
