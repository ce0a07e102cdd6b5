"""``precision: auto``: bf16 only where this CPU computes it natively and correctly."""

import warnings

import pytest


def test_auto_precision_is_bf16_only_where_it_was_measured_to_pay(monkeypatch):
    """``auto``: bf16-mixed on a CPU with native, correct bf16 (1.23x per step), 32-true on a
    GPU (an H100 ran bf16-mixed no faster) and on other CPUs; explicit values pass through."""
    import medmap.train.precision as P

    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(P, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(P, "bf16_conv_grad_errors", lambda: ((2, 0.004), (4, 0.004)))
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
    top = P.PROBE_EDGES[-1]
    monkeypatch.setattr(P, "bf16_conv_grad_errors", lambda: ((2, 0.004), (top, 1.3e36)))
    with pytest.warns(RuntimeWarning, match=r"bf16 convolution gradients disagree with fp32 "
                                            r"\(relative error 1.3e\+36.*runs in 32-true"):
        assert P.resolve_precision("auto", "cpu") == "32-true"
    assert P.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    monkeypatch.setattr(P, "bf16_conv_grad_errors",
                        lambda: ((2, P.BF16_GRAD_TOLERANCE / 2), (top, 0.004)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve_precision("auto", "cpu") == "bf16-mixed"


@pytest.mark.parametrize("errors, edge", [(((1, 0.004), (2, 0.005), (3, 0.004), (4, 0.004)), 0),
                                          (((1, 9e9), (2, 1e36), (3, 0.004), (4, 0.004)), 2),
                                          (((1, 0.004), (2, float("nan")), (3, 0.0), (4, 0.0)), 2),
                                          (((1, 0.004), (2, 0.004), (3, 0.004), (4, 0.2)), None)])
def test_bf16_stays_usable_where_only_the_smallest_maps_are_wrong(monkeypatch, errors, edge):
    """The AMD EPYC's kernels are wrong on 1^3 and 2^3 maps and right from 3^3: bf16-mixed
    stays the choice there, with those maps' convolutions in fp32 (the engine adds the guard
    with a warning); wrong on the largest probed map too, fp32."""
    import medmap.train.engine as E
    import medmap.train.precision as P
    from medmap.train.bf16_guard import SmallMapFP32

    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(E, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(P, "bf16_conv_grad_errors", lambda: errors)
    assert P.bf16_fp32_map_edge() == edge
    if edge is None:
        with pytest.warns(RuntimeWarning, match="runs in 32-true"):
            assert P.resolve_precision("auto", "cpu") == "32-true"
        with pytest.warns(RuntimeWarning, match="wrong on every probed"):
            assert E.small_map_guard("bf16-mixed", "cpu") == []  # forced bf16: no guard helps
        return
    assert P.resolve_precision("auto", "cpu") == "bf16-mixed"
    if edge:
        with pytest.warns(RuntimeWarning, match=rf"up to {edge}\^3 voxels.*run in fp32"):
            guard = E.small_map_guard("bf16-mixed", "cpu")
        assert isinstance(guard[0], SmallMapFP32) and guard[0].max_edge == edge
    else:
        assert E.small_map_guard("bf16-mixed", "cpu") == []
    assert E.small_map_guard("32-true", "cpu") == []


def test_the_bf16_gradient_probe_measures_against_fp32(monkeypatch):
    """The probe itself, whatever this machine's own kernels do: a conv3d whose gradients are
    garbage under autocast is caught; one that computes exactly under autocast passes."""
    import torch

    import medmap.train.precision as P

    P.bf16_conv_grad_errors.cache_clear()
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

    def broken_small(self, x, weight, bias):     # garbage on maps up to 2^3 only
        return (broken if min(x.shape[2:]) <= 2 else exact)(self, x, weight, bias)

    try:
        monkeypatch.setattr(torch.nn.Conv3d, "_conv_forward", broken)
        assert P.bf16_conv_grad_error() > 1e20 and P.bf16_fp32_map_edge() is None
        P.bf16_conv_grad_errors.cache_clear()
        monkeypatch.setattr(torch.nn.Conv3d, "_conv_forward", exact)
        assert P.bf16_conv_grad_error() < 1e-5 <= P.BF16_GRAD_TOLERANCE
        assert P.bf16_fp32_map_edge() == 0
        P.bf16_conv_grad_errors.cache_clear()
        monkeypatch.setattr(torch.nn.Conv3d, "_conv_forward", broken_small)
        errors = dict(P.bf16_conv_grad_errors())
        assert errors[1] > 1e20 and errors[2] > 1e20 and errors[3] < 1e-5
        assert P.bf16_fp32_map_edge() == 2
    finally:
        P.bf16_conv_grad_errors.cache_clear()


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
    P.bf16_conv_grad_errors.cache_clear()
    try:
        P.bf16_conv_grad_errors()
    finally:
        P.bf16_conv_grad_errors.cache_clear()
    assert torch.equal(torch.rand(4), expected)
