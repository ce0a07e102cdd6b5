"""Channels-last weights for the 3D convolutions of a trained module.

oneDNN's CPU convolutions run faster on the channels-last layout (N, D, H, W, C in memory) than
on PyTorch's default contiguous one: one fine-tuning step of the demo's liver model (8 CNN
experts and conv streams at 32^3, batch 8) 1.15-1.2x, one pre-training step 1.2x, in bf16-mixed
and in fp32 alike (``python benchmarks/train_precision.py``). Storing a convolution's weight
channels-last is enough: the convolution then returns its output in that layout and the next
one reads it so. Only the layout changes: the same values, parameters, state dict and saved
weights (``save_pretrained`` writes contiguous tensors); results differ from the contiguous
layout by rounding only (another summation order).

``OptimConfig.memory_format: auto`` uses it on CPUs (the engine adds :class:`ChannelsLast3d`,
:func:`medmap.train.engine.build_trainer`); on GPUs ``auto`` keeps the contiguous layout, where
it was not measured.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.GELU())
    >>> channels_last_convs(net)
    1
    >>> net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    True
    >>> net(torch.randn(2, 1, 8, 8, 8)).is_contiguous(memory_format=torch.channels_last_3d)
    True
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import nn

MemoryFormat = Literal["auto", "contiguous", "channels_last_3d"]
_CONVS = (nn.Conv3d, nn.ConvTranspose3d)


def resolve_memory_format(memory_format: str, accelerator: str = "auto") -> str:
    """``auto`` -> ``channels_last_3d`` when training runs on the CPU, ``contiguous`` on a GPU;
    the two explicit values unchanged. Raises ValueError naming the field for anything else."""
    if memory_format not in ("auto", "contiguous", "channels_last_3d"):
        raise ValueError(f"memory_format must be auto, contiguous or channels_last_3d, got "
                         f"{memory_format!r}")
    if memory_format != "auto":
        return memory_format
    gpu = accelerator in ("gpu", "cuda", "mps") or (
        accelerator == "auto" and torch.cuda.is_available())
    return "contiguous" if gpu else "channels_last_3d"


def channels_last_convs(module: nn.Module) -> int:
    """Store the weight of every 3D convolution inside ``module`` channels-last, in place
    (the same ``Parameter`` objects, so an optimiser built before or after keeps them); returns
    how many."""
    n = 0
    for m in module.modules():
        if isinstance(m, _CONVS) and m.weight.dim() == 5:
            with torch.no_grad():
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
            n += 1
    return n


class ChannelsLast3d(L.Callback):
    """:func:`channels_last_convs` on the trained module before a stage starts (Lightning's
    ``setup`` runs before the optimiser is built, a checkpoint restored and DDP wraps the
    module). A module-level class, so that ``ddp_spawn`` can pickle it into each process."""

    def setup(self, trainer: Any, pl_module: L.LightningModule, stage: str) -> None:
        channels_last_convs(pl_module)


__all__ = ["ChannelsLast3d", "MemoryFormat", "channels_last_convs", "resolve_memory_format"]
