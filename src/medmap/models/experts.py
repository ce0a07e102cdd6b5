"""Modality experts: one 3D vision encoder + projection per MRI sequence (MedMAP and MG-3D).

``ModalityExperts(modalities, encoder_cfg, embed_dim)`` holds one encoder and one linear
projection per modality (or a single shared pair with ``shared=True``: the modality-agnostic
ablation). ``encode(x, modality)`` maps volumes ``(B, 1, D, H, W)`` of one modality to projected
tokens ``(B, N, embed_dim)``.

``checkpoint=True`` (``MedMAPConfig.expert_checkpoint``) recomputes each expert's activations in
the backward pass instead of keeping them (``torch.utils.checkpoint``, non-reentrant, expert by
expert, in training mode only): a fine-tuning step over 8 sequences then holds the activations
of one expert at a time. The forward values and the gradients are the same as without it
(``tests/models/test_experts.py``). With MONAI's per-block checkpointing inside each expert as
well (``SwinConfig.use_checkpoint``), only one Swin block's activations are alive at a time: the
paper's fine-tuning step (128^3, 8 phases, batch 2, Swin feature size 48) peaks at 15.3 GiB
(CPU, ``benchmarks/train_step.py --checkpoint --expert-checkpoint``; ``docs/benchmarks.md``).

Example:
    >>> import torch
    >>> from medmap.models.encoders import CNNConfig
    >>> ex = ModalityExperts(["T2WI", "C+A"], CNNConfig(channels=(8, 16)), embed_dim=32)
    >>> tuple(ex.encode(torch.zeros(2, 1, 32, 32, 32), "C+A").shape)
    (2, 512, 32)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from medmap.models.encoders import EncoderConfig, build_encoder


class ModalityExperts(nn.Module):
    """One encoder + projection per modality, or a single shared pair (``shared=True``)."""

    def __init__(self, modalities: list[str], enc_cfg: EncoderConfig, embed_dim: int,
                 shared: bool = False, checkpoint: bool = False):
        super().__init__()
        self.modalities = list(modalities)
        self.shared = shared
        self.checkpoint = checkpoint
        keys = ["shared"] if shared else self.modalities
        self.encoders = nn.ModuleDict({k: build_encoder(enc_cfg) for k in keys})
        width = next(iter(self.encoders.values())).out_dim
        self.proj = nn.ModuleDict({k: nn.Linear(width, embed_dim) for k in keys})

    def key(self, modality: str) -> str:
        """The module key of ``modality``'s expert (``"shared"`` for a shared encoder)."""
        if modality not in self.modalities:
            raise KeyError(f"no expert for modality {modality!r}; experts: {self.modalities}")
        return "shared" if self.shared else modality

    def _encode(self, x: torch.Tensor, k: str, maps: bool = False):
        if not maps:
            return self.proj[k](self.encoders[k](x).tokens)      # (B, N, C) -> (B, N, d)
        fmaps = self.encoders[k].feature_maps(x)                 # finest first
        tokens = fmaps[-1].flatten(2).transpose(1, 2)            # (B, N, C)
        return self.proj[k](tokens), fmaps

    def encode(self, x: torch.Tensor, modality: str, maps: bool = False):
        """Projected tokens (B, N, d) of ``modality``'s expert on volumes x (B, 1, D, H, W);
        with ``maps`` also every stage's feature map (``Encoder3D.feature_maps``)."""
        k = self.key(modality)
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return _checkpoint(self._encode, x, k, maps, use_reentrant=False)
        return self._encode(x, k, maps)
