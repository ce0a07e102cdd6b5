"""``precision: auto``: bf16 only where this CPU computes it natively and correctly."""

import warnings

import pytest


def test_auto_precision_is_bf16_only_where_it_was_measured_to_pay(monkeypatch):
    """``auto``: bf16-mixed on a CPU with native, correct bf16 (1.23x per step), 32-true on a
    GPU (an H100 ran bf16-mixed no faster) and on other CPUs; explicit values pass through."""
    import medmap.train.precision as P

    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(P, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(P, "bf16_conv_grad_error", lambda: 0.004)
    assert P.resolve_precision("auto", "auto") == "32-true"        # a GPU
    assert P.resolve_precision("auto", "gpu") == "32-true"
    assert P.resolve_precision("auto", "cpu") == "bf16-mixed"      # the CPU asked for
    assert P.resolve_precision("bf16-mixed", "gpu") == "bf16-mixed"
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    assert P.resolve_precision("auto", "auto") == "bf16-mixed"
    monkeypatch.setattr(P, "native_bf16_cpu", lambda: False)
    assert P.resolve_precision("auto", "auto") == "32-true"
    assert P.resolve_precision("16-mixed", "cpu") == "16-mixed"


def test_auto_precision_keeps_fp32_where_bf16_gradients_are_wrong(monkeypatch):
    """A CPU that has bf16 instructions but whose kernels return wrong convolution gradients
    (an AMD EPYC with torch 2.13: weight gradients of ~1e36 on a 2^3 feature map, the demo's
    liver fine-tuning went NaN) trains in 32-true, with a warning naming the error; forcing
    bf16-mixed stays possible."""
    import medmap.train.precision as P

    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(P, "bf16_conv_grad_error", lambda: 1.3e36)
    with pytest.warns(RuntimeWarning, match=r"bf16 convolution gradients disagree with fp32 "
                                            r"\(relative error 1.3e\+36.*runs in 32-true"):
        assert P.resolve_precision("auto", "cpu") == "32-true"
    assert P.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    monkeypatch.setattr(P, "bf16_conv_grad_error", lambda: P.BF16_GRAD_TOLERANCE / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve_precision("auto", "cpu") == "bf16-mixed"


def test_the_bf16_gradient_probe_measures_against_fp32(monkeypatch):
    """The probe itself, whatever this machine's own kernels do: a conv3d whose gradients are
    garbage under autocast is caught; one that computes exactly under autocast passes."""
    import torch

    import medmap.train.precision as P

    P.bf16_conv_grad_error.cache_clear()
    real_conv = torch.nn.Conv3d._conv_forward

    class Garbage(torch.autograd.Function):      # right values, gradients x 1e30
        @staticmethod
        def forward(ctx, y):
            return y.view_as(y)

        @staticmethod
        def backward(ctx, g):
            return g * 1e30

    def broken(self, x, weight, bias):
        y = real_conv(self, x, weight, bias)
        return Garbage.apply(y) if torch.is_autocast_enabled("cpu") else y

    def exact(self, x, weight, bias):             # a correct kernel: fp32 under autocast
        with torch.autocast("cpu", enabled=False):
            return real_conv(self, x.float(), weight.float(), None if bias is None
                             else bias.float())

    try:
        monkeypatch.setattr(torch.nn.Conv3d, "_conv_forward", broken)
        assert P.bf16_conv_grad_error() > 1e20
        P.bf16_conv_grad_error.cache_clear()
        monkeypatch.setattr(torch.nn.Conv3d, "_conv_forward", exact)
        assert P.bf16_conv_grad_error() < 1e-5 <= P.BF16_GRAD_TOLERANCE
    finally:
        P.bf16_conv_grad_error.cache_clear()


def test_the_probe_leaves_the_global_rng_alone():
    """The probe runs after a stage has seeded and built its model; dropout and augmentation
    draw from the global RNG afterwards, so a run must draw the same numbers with or without
    it (the first version initialised its convolutions from that RNG and shifted every
    seeded bf16-capable run)."""
    import torch

    import medmap.train.precision as P

    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    P.bf16_conv_grad_error.cache_clear()
    try:
        P.bf16_conv_grad_error()
    finally:
        P.bf16_conv_grad_error.cache_clear()
    assert torch.equal(torch.rand(4), expected)
