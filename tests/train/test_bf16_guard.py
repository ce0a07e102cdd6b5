"""bf16-mixed training on a CPU whose bf16 convolution gradients are wrong on the smallest maps:
those convolutions run in fp32, the rest in bf16 (``medmap.train.bf16_guard``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medmap.train.bf16_guard import Fp32SmallMapConv3d, guard_small_maps

REAL_CONV = nn.Conv3d._conv_forward


class _Inf(torch.autograd.Function):           # right values, infinite gradients
    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("inf"))


def _broken_on_small_maps(self, x, weight, bias):
    """A kernel like the AMD EPYC's: under CPU bf16 autocast, garbage gradients on maps of at
    most 2 voxels per edge, right ones elsewhere."""
    y = REAL_CONV(self, x, weight, bias)
    return _Inf.apply(y) if torch.is_autocast_enabled("cpu") and min(x.shape[2:]) <= 2 else y


def _net():
    torch.manual_seed(0)           # 4^3 -> 2^3 (bf16: its input is 4^3) -> 2^3 (fp32 when guarded)
    return nn.Sequential(nn.Conv3d(2, 8, 3, stride=2, padding=1), nn.GELU(),
                         nn.Conv3d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(64, 1))


def _grads(net, x, bf16):
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    out.float().sum().backward()
    return [p.grad.clone() for p in net.parameters()]


def test_guarded_convolutions_compute_small_maps_in_fp32_and_keep_their_weights(monkeypatch):
    """Under a kernel broken on 2^3 maps, the guarded net's gradients match fp32 within bf16
    rounding (the unguarded net's are infinite); the convolution on the 4^3 map stays in bf16;
    the parameters, state dict and fp32 results are those of the plain net."""
    monkeypatch.setattr(nn.Conv3d, "_conv_forward", _broken_on_small_maps)
    x = torch.randn(4, 2, 4, 4, 4)
    plain, guarded = _net(), _net()
    assert guard_small_maps(guarded, max_edge=2) == 2
    assert all(type(m) is Fp32SmallMapConv3d for m in (guarded[0], guarded[2]))
    ref = _grads(plain, x, bf16=False)
    assert not all(bool(torch.isfinite(g).all()) for g in _grads(plain, x, bf16=True))
    got = _grads(guarded, x, bf16=True)
    for r, g in zip(ref, got):
        assert float((g - r).abs().max() / r.abs().max()) < 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert guarded[0](x).dtype == torch.bfloat16                 # the 4^3 input: bf16
        assert guarded[2](torch.randn(1, 8, 2, 2, 2)).dtype == torch.float32
    assert plain.state_dict().keys() == guarded.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 guarded.state_dict().values()))
    assert torch.equal(plain(x), guarded(x))                         # fp32: unchanged
    assert type(copy.deepcopy(guarded)[2]) is Fp32SmallMapConv3d


def test_the_guard_reads_the_last_three_axes_and_takes_bf16_weights():
    """An unbatched (C, D, H, W) input is measured on D, H, W; a module whose weights were cast
    to bf16 (sharded mixed precision, ``model.to(torch.bfloat16)``) still runs in fp32."""
    net = _net()
    guard_small_maps(net, max_edge=2)
    conv = net[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(8, 2, 2, 2)).dtype == torch.float32        # unbatched 2^3
        assert conv(torch.randn(8, 4, 4, 4)).dtype == torch.bfloat16
        conv.to(torch.bfloat16)
        y = conv(torch.randn(1, 8, 2, 2, 2, dtype=torch.bfloat16))
    assert y.dtype == torch.float32


def test_run_info_records_the_guarded_edge(tmp_path):
    """``run_info.json`` says when bf16-mixed ran the smallest maps' convolutions in fp32."""
    import json
    from types import SimpleNamespace

    from medmap.train.bf16_guard import SmallMapFP32
    from medmap.train.stage import record_hardware

    class CPUAccelerator:
        pass

    for callbacks, expected in (([SmallMapFP32(2)], 2), ([], None)):
        record_hardware(tmp_path, SimpleNamespace(accelerator=CPUAccelerator(),
                                                  precision="bf16-mixed", callbacks=callbacks))
        info = json.loads((tmp_path / "run_info.json").read_text())
        assert info.get("fp32_conv_map_edge") == expected and info["precision"] == "bf16-mixed"
        (tmp_path / "run_info.json").unlink()


@pytest.mark.parametrize("guarded", [False, True])
def test_bf16_training_on_such_a_cpu_trains_with_the_engines_guard(monkeypatch, guarded):
    """Lightning bf16-mixed training through the engine's guard finishes with finite weights on
    a CPU whose kernels are broken on 2^3 maps; without it the run stops at its first step
    (the non-finite gradient check) instead of training on NaN."""
    import lightning as L

    import medmap.train.engine as E
    import medmap.train.precision as P
    from medmap.train.modules import TrainingDivergedError, TrainModule

    class Fit(TrainModule):
        def training_step(self, batch, batch_idx):
            return (self.model(batch[0]).float() ** 2).mean()

    monkeypatch.setattr(nn.Conv3d, "_conv_forward", _broken_on_small_maps)
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(E, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(E, "bf16_fp32_map_edge", lambda: 2)
    callbacks = []
    if guarded:
        with pytest.warns(RuntimeWarning, match="run in fp32"):
            callbacks = E.small_map_guard("bf16-mixed", "cpu")
    module = Fit(_net(), None, E.OptimConfig(lr=1e-3))
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(16, 2, 4, 4, 4)), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_epochs=2,
                        gradient_clip_val=1.0, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    if guarded:
        trainer.fit(module, data)
        assert trainer.global_step == 8
    else:
        with pytest.raises(TrainingDivergedError, match="epoch 0, step 0"):
            trainer.fit(module, data)
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
