"""bf16-mixed training on a CPU whose bf16 kernels are wrong on the smallest feature maps.

On an AMD EPYC (AVX512-BF16, no AMX) torch 2.13's oneDNN returns garbage weight gradients for
bf16 3D convolutions on maps of 1^3 and 2^3 voxels and correct ones from 3^3 up
(:func:`medmap.train.precision.bf16_fp32_map_edge` measures which, once per process). The
demo's conv stream ends on a 2^3 map. Rather than train everything in fp32 there (1.26x slower
per fine-tuning step on that CPU), every ``nn.Conv3d`` of the
trained module runs in fp32 on inputs whose smallest spatial edge is at most that size and in
bf16 otherwise: those convolutions are a few thousand voxels, a negligible share of the work
(guarded bf16 there: 1.23x per fine-tuning step and 1.66x per pre-training step over fp32,
``benchmarks/train_precision.py``).
The engine installs it (:class:`SmallMapFP32`) only where the probe found such kernels; on a
CPU whose kernels are right nothing changes.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv3d(4, 4, 3, padding=1))
    >>> guard_small_maps(net, max_edge=2)
    1
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     net(torch.randn(1, 4, 2, 2, 2)).dtype, net(torch.randn(1, 4, 8, 8, 8)).dtype
    (torch.float32, torch.bfloat16)
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn


class Fp32SmallMapConv3d(nn.Conv3d):
    """``nn.Conv3d`` that computes in fp32 under CPU autocast when its input's smallest spatial
    edge is at most ``fp32_max_edge`` (set by :func:`guard_small_maps`); the same parameters,
    state dict and results otherwise."""

    fp32_max_edge: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and min(x.shape[-3:]) <= self.fp32_max_edge):              # (D, H, W)
            bias = None if self.bias is None else self.bias.float()
            with torch.autocast("cpu", enabled=False):
                return self._conv_forward(x.float(), self.weight.float(), bias)  # fp32 output
        return super().forward(x)


def guard_small_maps(module: nn.Module, max_edge: int) -> int:
    """Turn every plain ``nn.Conv3d`` inside ``module`` into an :class:`Fp32SmallMapConv3d`
    with ``max_edge`` (in place; parameters untouched); returns how many."""
    n = 0
    for m in module.modules():
        if type(m) in (nn.Conv3d, Fp32SmallMapConv3d):
            m.__class__ = Fp32SmallMapConv3d
            m.fp32_max_edge = int(max_edge)
            n += 1
    return n


class SmallMapFP32(L.Callback):
    """Guards the trained module's convolutions (:func:`guard_small_maps`) before a stage
    starts. A module-level class, so that ``ddp_spawn`` can pickle it into each process."""

    def __init__(self, max_edge: int) -> None:
        self.max_edge = int(max_edge)

    def setup(self, trainer: Any, pl_module: L.LightningModule, stage: str) -> None:
        guard_small_maps(pl_module, self.max_edge)


__all__ = ["Fp32SmallMapConv3d", "guard_small_maps", "SmallMapFP32"]
