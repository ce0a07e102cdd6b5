"""MedMAP: modality-aware experts (stage 1) and the CSA + CCT classifier (stage 2).

Stage 1, :class:`ModalityAwareCLIP`: one 3D vision encoder per MRI modality (an *expert*) with a
projection into the shared embedding space, a trainable projection of the frozen text encoder's
report embedding, and a learnable temperature. ``shared=True`` trains one modality-agnostic
encoder instead (the ablation baseline).

Stage 2, :class:`MedMAPClassifier`, per available modality ``m`` of a case:

* Transformer stream: the modality's (pre-trained) Swin expert -> tokens ``T_m`` (B, N, d)
* convolutional stream: a 3D conv stack on the same volume -> tokens ``f_v`` (B, N', d)
* CSA: the frozen text embedding of the modality's prompt -> trainable projection ``p_m`` (d),
  ``f_vt = T_m * p_m`` (element-wise, broadcast over tokens)
* CCT: bidirectional cross-attention between ``f_v`` and ``f_vt`` -> ``f_fusion_m`` (B, d)

then attention pooling over the case's *present* modalities (missing ones are masked out, never
zero-filled) -> ``f_fusion`` (B, d) -> classification head (B, K).

Inference uses only the volumes and the stored prompt embeddings: no report, no label.

Example:
    >>> import torch
    >>> from medmap.models.medmap import MedMAPConfig, MedMAPClassifier
    >>> cfg = MedMAPConfig.tiny(modalities=["T2WI", "C+A"], classes=["a", "b"])
    >>> model = MedMAPClassifier(cfg, prompt_embeddings=torch.randn(2, cfg.text_dim))
    >>> out = model(torch.randn(3, 2, 1, 32, 32, 32), torch.ones(3, 2, dtype=torch.bool))
    >>> tuple(out["logits"].shape)
    (3, 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from medmap.config import to_dict
from medmap.models.encoders import (CNNConfig, EncoderConfig, SwinConfig, build_encoder,
                                    tiny_encoder_config)
from medmap.models.experts import ModalityExperts
from medmap.models.hub import from_pretrained, register_model


@dataclass
class MedMAPConfig:
    """Architecture of both MedMAP stages (saved with the weights)."""

    modalities: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    organ: str = ""
    encoder: EncoderConfig = field(default_factory=SwinConfig)
    conv_stream: EncoderConfig = field(default_factory=lambda: CNNConfig(channels=(16, 32, 64, 96)))
    embed_dim: int = 256
    text_dim: int = 384
    shared_encoder: bool = False        # one modality-agnostic encoder (ablation)
    use_cct: bool = True                # conv stream + Cross-Cognition Transformer
    use_csa: bool = True                # text-guided Transformer stream (element-wise product)
    cct_layers: int = 1
    cct_heads: int = 4
    dropout: float = 0.1
    init_logit_scale: float = math.log(1 / 0.07)
    prompts: dict[str, str] = field(default_factory=dict)   # modality -> prompt text
    # recompute each expert's activations in the backward pass (memory for compute)
    expert_checkpoint: bool = False

    @classmethod
    def tiny(cls, modalities: list[str], classes: list[str], **kw) -> MedMAPConfig:
        """A small config for tests at 32^3."""
        base = dict(modalities=list(modalities), classes=list(classes),
                    encoder=tiny_encoder_config("swin"),
                    conv_stream=CNNConfig(channels=(8, 16, 16)),
                    embed_dim=32, text_dim=32, cct_heads=2, dropout=0.0)
        base.update(kw)
        return cls(**base)


@register_model("medmap_clip", MedMAPConfig)
class ModalityAwareCLIP(nn.Module):
    """Stage 1: modality-aware vision-language pre-training model.

    ``forward(images (B,1,D,H,W), modality_index (B,), text (B, text_dim))`` returns the
    contrastive loss's arguments: normalised ``image_features`` / ``text_features`` (B, d),
    ``modality`` (B,) and ``logit_scale``.
    """

    def __init__(self, cfg: MedMAPConfig):
        super().__init__()
        self.cfg = cfg
        self.experts = ModalityExperts(cfg.modalities, cfg.encoder, cfg.embed_dim,
                                       cfg.shared_encoder, cfg.expert_checkpoint)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))

    def encode_image(self, images: torch.Tensor, modality_index: torch.Tensor) -> torch.Tensor:
        """(B, d) unnormalised embeddings, each volume through its modality's expert."""
        out = None
        for m in torch.unique(modality_index).tolist():
            rows = (modality_index == m).nonzero(as_tuple=True)[0]
            emb = self.experts.encode(images[rows], self.cfg.modalities[m]).mean(1)  # (b, d)
            if out is None:
                out = emb.new_zeros(images.shape[0], emb.shape[-1])
            out = out.index_copy(0, rows, emb)
        return out

    def forward(self, images: torch.Tensor, modality_index: torch.Tensor,
                text: torch.Tensor) -> dict[str, torch.Tensor]:
        v = F.normalize(self.encode_image(images, modality_index), dim=-1)   # (B, d)
        t = F.normalize(self.text_proj(text), dim=-1)                          # (B, d)
        return {"image_features": v, "text_features": t, "modality": modality_index,
                "logit_scale": self.logit_scale.exp().clamp(max=100.0)}


def _pool(tokens: torch.Tensor) -> torch.Tensor:
    """(b, N, d) -> (b, 2d): mean and max over tokens. Lesions are small against the volume;
    the max keeps their response where the mean alone dilutes it."""
    return torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1)


class CrossCognitionBlock(nn.Module):
    """Bidirectional cross-attention: each token set attends to the other (pre-norm + FFN)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_a, self.norm_b = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.a_from_b = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.b_from_a = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn_a = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.ffn_b = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        na, nb = self.norm_a(a), self.norm_b(b)           # (B, Na, d), (B, Nb, d)
        a = a + self.a_from_b(na, nb, nb, need_weights=False)[0]
        b = b + self.b_from_a(nb, na, na, need_weights=False)[0]
        return a + self.ffn_a(a), b + self.ffn_b(b)


@register_model("medmap_classifier", MedMAPConfig,
                lambda cfg, state: MedMAPClassifier(cfg, state.get("prompt_embeddings")))
class MedMAPClassifier(nn.Module):
    """Stage 2: multi-modality abnormality classifier with CSA and CCT (see module doc).

    ``prompt_embeddings`` (M, text_dim): the frozen text encoder's embedding of each modality's
    prompt, stored as a buffer so inference needs no text model.
    """

    def __init__(self, cfg: MedMAPConfig, prompt_embeddings: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        M, d = len(cfg.modalities), cfg.embed_dim
        if M == 0 or not cfg.classes:
            raise ValueError("MedMAPConfig needs at least one modality and one class")
        self.experts = ModalityExperts(cfg.modalities, cfg.encoder, d, cfg.shared_encoder,
                                       cfg.expert_checkpoint)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        if prompt_embeddings is None:
            prompt_embeddings = torch.zeros(M, cfg.text_dim)
        if tuple(prompt_embeddings.shape) != (M, cfg.text_dim):
            raise ValueError(f"prompt_embeddings must be (M={M}, text_dim={cfg.text_dim}), got "
                             f"{tuple(prompt_embeddings.shape)}")
        self.register_buffer("prompt_embeddings", prompt_embeddings.float().clone())
        self.use_conv = cfg.use_cct or cfg.use_csa
        if self.use_conv:
            # One conv stream per modality (like the experts); LayerNorm puts its tokens on the
            # Swin tokens' scale (those are layer-normed).
            keys = ["shared"] if cfg.shared_encoder else cfg.modalities
            self.conv_stream = nn.ModuleDict({k: build_encoder(cfg.conv_stream) for k in keys})
            width = next(iter(self.conv_stream.values())).out_dim
            self.conv_proj = nn.ModuleDict({k: nn.Sequential(nn.Linear(width, d), nn.LayerNorm(d))
                                            for k in keys})
        if cfg.use_cct:
            self.cct = nn.ModuleList([CrossCognitionBlock(d, cfg.cct_heads, cfg.dropout)
                                      for _ in range(cfg.cct_layers)])
        self.merge = nn.Linear((4 if self.use_conv else 2) * d, d)
        # Cross-modality fusion: a Transformer layer over the present modalities' tokens
        # (modality embeddings as positions, absent ones masked out), then a masked mean.
        self.modality_embed = nn.Parameter(torch.zeros(M, d))
        self.fusion = nn.TransformerEncoderLayer(d, cfg.cct_heads, 2 * d, cfg.dropout,
                                                 activation="gelu", batch_first=True,
                                                 norm_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, len(cfg.classes)))
        nn.init.normal_(self.modality_embed, std=0.02)

    def modality_feature(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """Fused feature (b, d) of modality ``m``'s volumes ``x`` (b, 1, D, H, W)."""
        name = self.cfg.modalities[m]
        f_swin = self.experts.encode(x, name)                    # (b, N, d) Transformer stream
        if self.cfg.use_csa:
            p = self.text_proj(self.prompt_embeddings[m])         # (d,)
            f_swin = f_swin * p                                   # f_vt: text-guided tokens
        if not self.use_conv:
            return self.merge(_pool(f_swin))
        k = self.experts.key(name)
        f_v = self.conv_proj[k](self.conv_stream[k](x).tokens)  # (b, N', d) conv stream
        if self.cfg.use_cct:
            for blk in self.cct:
                f_v, f_swin = blk(f_v, f_swin)
        return self.merge(torch.cat([_pool(f_v), _pool(f_swin)], dim=-1))  # (b, d)

    def forward(self, images: torch.Tensor, present: torch.Tensor,
                text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """images (B, M, 1, D, H, W), present (B, M) bool -> ``logits`` (B, K), ``probs``,
        ``fusion`` (B, d); with ``text`` (B, text_dim), the frozen embedding of each case's
        report (training only), also ``text_features`` (B, d) for the KL term."""
        B, M = present.shape
        if M != len(self.cfg.modalities):
            raise ValueError(f"expected {len(self.cfg.modalities)} modalities "
                             f"{self.cfg.modalities}, got {M}")
        if not present.any(1).all():
            empty = (~present.any(1)).nonzero().flatten().tolist()
            raise ValueError(f"batch rows {empty} have no modality present; every case needs one")
        feats = images.new_zeros(B, M, self.cfg.embed_dim)       # (B, M, d)
        for m in range(M):
            rows = present[:, m].nonzero(as_tuple=True)[0]
            if rows.numel():
                feats = feats.index_copy(1, torch.tensor([m], device=feats.device),
                                         feats[:, m:m + 1].index_copy(
                                             0, rows, self.modality_feature(images[rows, m], m)[:, None]))
        feats = feats + self.modality_embed                      # (B, M, d)
        feats = self.fusion(feats, src_key_padding_mask=~present)  # absent tokens never attended
        w = present.unsqueeze(-1).to(feats.dtype)                # (B, M, 1)
        fusion = self.norm((feats * w).sum(1) / w.sum(1))        # (B, d) mean over present
        logits = self.head(fusion)                               # (B, K)
        out = {"logits": logits, "probs": logits.softmax(-1), "fusion": fusion}
        if text is not None:
            out["text_features"] = self.text_features(text)
        return out

    def text_features(self, text: torch.Tensor) -> torch.Tensor:
        """Projected report / class-prompt embedding ``f_t`` (B, d), training only."""
        return self.text_proj(text)


__all__ = ["MedMAPConfig", "ModalityExperts", "ModalityAwareCLIP", "MedMAPClassifier",
           "load_pretrained_experts",
           "CrossCognitionBlock"]


def load_pretrained_experts(model: MedMAPClassifier, pretrained: str) -> MedMAPClassifier:
    """Copy stage-1 experts, their projections and the text projection into ``model``
    (from a MedMAP contrastive or an MG-3D pre-trained folder).

    Raises ``ValueError`` naming the fix when the folder holds no pre-trained model, when a
    modality has no expert, or when the architectures differ: never a silent random init.
    """
    # MedMAP's contrastive experts or MG-3D's (same experts / text_proj layout)
    clip, _ = from_pretrained(pretrained, expect_type=("medmap_clip", "mg3d"))
    pc, fc = clip.cfg, model.cfg
    for name in ("encoder", "embed_dim", "text_dim", "shared_encoder"):
        a, b = getattr(pc, name), getattr(fc, name)
        a, b = (to_dict(a), to_dict(b)) if name == "encoder" else (a, b)
        if a != b:
            raise ValueError(f"{pretrained}: pre-trained {name} {a} differs from the fine-tuning "
                             f"config's {b}; use the same model.{name} in both stages")
    if not fc.shared_encoder:
        missing = [m for m in fc.modalities if m not in pc.modalities]
        if missing:
            raise ValueError(f"{pretrained}: no pre-trained expert for modalities {missing} "
                             f"(experts: {pc.modalities}); pre-train them or drop them from "
                             "data.modalities")
    for k in model.experts.encoders:
        model.experts.encoders[k].load_state_dict(clip.experts.encoders[k].state_dict())
        model.experts.proj[k].load_state_dict(clip.experts.proj[k].state_dict())
    model.text_proj.load_state_dict(clip.text_proj.state_dict())
    return model
