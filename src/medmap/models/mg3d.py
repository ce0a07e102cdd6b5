"""MG-3D: multi-grained 3D vision-language pre-training on MedMAP's modality experts.

Per (volume, report) pair, with the frozen text encoder's precomputed features (word tokens,
sentence features = the mean of each sentence's word tokens, separately encoded sentence
embeddings, the pooled report embedding; see :mod:`medmap.train.mg3d`):

* uni-modal global features: ``F_I = encode_image`` (mean of the expert's projected tokens of the
  full volume) and ``F_T = text_proj(pooled report embedding)``;
* MIM: sub-volumes of the input are masked (zeroed), the masked volume goes through the same
  expert, fusion layers (volume-dominated cross-modal attention, sentence features as queries)
  and a conv + upsampling decoder reconstruct it; MSE on masked voxels;
* MLM: word features at masked positions are replaced by a learned mask embedding; fusion layers
  (text-dominated, the full volume's tokens as queries) and an MLP head over the tokenizer
  vocabulary predict the original token ids; cross-entropy on masked positions;
* SFR: the MLM branch's fused word features averaged per sentence vs. the original sentence
  features (cosine similarity matrix towards the identity);
* CML: F_I vs. H_I (mean of the MIM branch's fused volume tokens) and F_T vs. H_T (attention
  pooling of the per-sentence fused word features);
* SSM / DFA: sentence-specific global visual features H_S (each separately encoded sentence
  attends over the full volume's tokens, eq. 11); SSM matches their inter-patient similarity
  matrix to the sentence embeddings', DFA contrasts their attention-pooled aggregate with F_I;
* ITC (our addition): CLIP loss between F_I and F_T, so zero-shot / retrieval work.

The experts are MedMAP's :class:`~medmap.models.experts.ModalityExperts` (``shared_encoder=True``:
one encoder as in the paper; ``False``: one per MRI sequence), so a pre-trained model exposes the
same ``experts`` / ``text_proj`` / ``encode_image`` interface as ``ModalityAwareCLIP``.

Example:
    >>> from medmap.models.mg3d import MG3DConfig, MG3DModel
    >>> model = MG3DModel(MG3DConfig.tiny(["T2WI"], vocab_size=100))   # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmap.config import ConfigError
from medmap.losses.mg3d import MG3DLossConfig
from medmap.models.encoders import (CNNConfig, EncoderConfig, SwinConfig, build_encoder,
                                    tiny_encoder_config)
from medmap.models.experts import ModalityExperts
from medmap.models.fusion import AttentionPool, CrossModalAttention, FusionStack
from medmap.models.hub import register_model

__all__ = ["MG3DConfig", "MG3DModel", "VolumeDecoder", "feature_stride", "random_volume_mask",
           "random_word_mask", "sentence_mean"]


@dataclass
class MG3DConfig:
    """MG-3D architecture, masking and loss settings (saved with the weights).

    ``encoder``, ``embed_dim`` and ``shared_encoder`` may be left ``None`` in an experiment
    config: ``pretrain_mg3d`` then takes them from ``model.*`` (the MedMAP experts' settings).
    ``modalities``, ``organ``, ``text_dim`` and ``vocab_size`` are filled from the data and the
    text encoder.
    """

    modalities: list[str] = field(default_factory=list)
    organ: str = ""
    encoder: EncoderConfig | None = None
    embed_dim: int | None = None
    shared_encoder: bool | None = None
    text_dim: int = 384
    vocab_size: int = 0
    fusion_layers: int = 2
    fusion_heads: int = 4
    mim_attention: str = "proposed"     # "proposed" (volume-dominated) or "classical" (Table III)
    mlm_attention: str = "proposed"     # "proposed" (text-dominated) or "classical"
    mim_guidance: str = "sentence"      # "sentence" or "word" features as MIM queries (Table III)
    mask_ratio: float = 0.6             # fraction of sub-volumes masked for MIM
    mask_patch: int = 16                # sub-volume side in voxels
    mlm_probability: float = 0.15       # fraction of words masked for MLM (at least one)
    max_sentences: int = 32             # sentences kept per report (reading order)
    decoder_min_channels: int = 16
    decoder_head_stride: int = 2        # 1: the last conv stage at full resolution (slower)
    dropout: float = 0.0
    init_logit_scale: float = math.log(1 / 0.07)
    encoder_lr_scale: float = 1.0       # encoder LR / fusion LR (paper: 2e-5 / 1e-4 = 0.2)
    group_by_modality: bool = True      # batches within one MRI sequence (as MedMAP pretrain)
    # train on each sequence's report followed by the case's global impression
    global_report: bool = True
    losses: MG3DLossConfig = field(default_factory=MG3DLossConfig)

    @classmethod
    def tiny(cls, modalities: list[str], vocab_size: int, text_dim: int = 32, **kw) -> MG3DConfig:
        """A small config for tests at 32^3."""
        base: dict[str, Any] = dict(modalities=list(modalities), vocab_size=vocab_size,
                                    text_dim=text_dim, encoder=tiny_encoder_config("swin"),
                                    embed_dim=32, shared_encoder=False, fusion_layers=1,
                                    fusion_heads=2, mask_patch=8, decoder_min_channels=8)
        base.update(kw)
        return cls(**base)


def feature_stride(enc: EncoderConfig) -> int:
    """Down-sampling factor of the encoder's token map (input side / token-grid side)."""
    if isinstance(enc, SwinConfig):
        return enc.patch_size * 2 ** enc.out_stage
    if isinstance(enc, CNNConfig):
        return 2 ** len(enc.channels)
    net = build_encoder(enc)              # any other encoder: measure it once
    size = max(32, 2 * net.min_multiple)
    with torch.no_grad():
        fmap = net.eval()(torch.zeros(1, enc.in_channels, size, size, size)).feature_map
    return size // fmap.shape[-1]


class VolumeDecoder(nn.Module):
    """Conv + up-sampling decoder: fused tokens (B, N, d) on the token grid -> (B, 1, D, H, W).

    log2(stride / head_stride) stages of [trilinear x2 up-sampling, 3^3 conv, instance norm,
    GELU] halving the channels (not below ``min_channels``), then a 1^3 conv to one channel;
    the one-channel prediction is then up-sampled (trilinear) to the input's size. With
    ``head_stride=2`` (MG3DConfig's default) the last conv stage runs at half resolution: the
    full-resolution stage cost about half of an MG-3D step (docs/benchmarks.md); ``1`` is the
    full-resolution decoder.
    """

    def __init__(self, dim: int, stride: int, min_channels: int = 16, head_stride: int = 1):
        super().__init__()
        n = int(round(math.log2(stride)))
        if 2 ** n != stride:
            raise ValueError(f"encoder stride {stride} is not a power of two")
        if head_stride not in (1, 2) or head_stride > stride:
            raise ValueError(f"decoder head_stride must be 1 or 2 (at most the encoder stride "
                             f"{stride}), got {head_stride}")
        n -= head_stride.bit_length() - 1       # conv stages stop at the head's resolution
        blocks: list[nn.Module] = []
        c = dim
        for _ in range(n):
            c_out = max(min_channels, c // 2)
            blocks += [nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                       nn.Conv3d(c, c_out, 3, padding=1), nn.InstanceNorm3d(c_out, affine=True),
                       nn.GELU()]
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv3d(c, 1, 1)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, ...],
                out_size: tuple[int, ...]) -> torch.Tensor:
        B, N, d = tokens.shape
        x = tokens.transpose(1, 2).reshape(B, d, *grid)                # (B, d, g, g, g)
        x = self.head(self.blocks(x))                                  # (B, 1, D', H', W')
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="trilinear", align_corners=False)
        return x


def random_volume_mask(shape: tuple[int, ...] | torch.Size, patch: int, ratio: float,
                       device: torch.device | str = "cpu",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1, D, H, W) bool on ``device``, True in ``round(ratio * n)`` random sub-volumes of side
    ``patch`` per volume (at least one masked and one visible); border sub-volumes may be
    partial. The random numbers come from ``generator`` (on its own device) or the global RNG."""
    B, _, D, H, W = shape
    g = [math.ceil(s / patch) for s in (D, H, W)]
    n = g[0] * g[1] * g[2]
    k = min(max(1, round(ratio * n)), max(1, n - 1))
    noise = torch.rand(B, n, generator=generator,
                       device=generator.device if generator is not None else device).to(device)
    idx = noise.argsort(1)[:, :k]
    m = torch.zeros(B, n, dtype=torch.bool, device=device).scatter_(1, idx, True)
    m = m.view(B, 1, *g)
    for dim in (2, 3, 4):
        m = m.repeat_interleave(patch, dim=dim)
    return m[:, :, :D, :H, :W]


def random_word_mask(maskable: torch.Tensor, prob: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) bool: each maskable word (``maskable`` True) masked with ``prob``; every row with a
    maskable word gets at least one."""
    r = torch.rand(maskable.shape, generator=generator,
                   device=generator.device if generator is not None else maskable.device)
    r = r.to(maskable.device)
    m = (r < prob) & maskable
    first = r.masked_fill(~maskable, 2.0).argmin(1)                    # (B,)
    force = F.one_hot(first, maskable.shape[1]).bool() & maskable & ~m.any(1, keepdim=True)
    return m | force


def sentence_mean(tokens: torch.Tensor, sentence_index: torch.Tensor, n_sent: int) -> torch.Tensor:
    """Average of each sentence's tokens: tokens (B, L, d), sentence_index (B, L) long in
    [-1, n_sent) (-1 = no sentence) -> (B, n_sent, d); zero for sentences without tokens."""
    onehot = (sentence_index[:, None, :] == torch.arange(n_sent, device=tokens.device)[None, :, None])
    a = onehot.to(tokens.dtype)                                        # (B, S, L)
    return (a @ tokens) / a.sum(-1, keepdim=True).clamp_min(1.0)


def _build(cfg: MG3DConfig, state: dict[str, torch.Tensor]) -> MG3DModel:
    """Rebuild from a folder: folders saved before ``decoder_head_stride`` existed hold the
    full-resolution decoder (one more conv stage); their config does not say so, the weights
    do."""
    convs = sum(1 for k, v in state.items()
                if k.startswith("decoder.blocks.") and k.endswith(".weight") and v.ndim == 5)
    if convs and convs == int(round(math.log2(feature_stride(cfg.encoder)))):
        cfg.decoder_head_stride = 1
    return MG3DModel(cfg)


@register_model("mg3d", MG3DConfig, _build)
class MG3DModel(nn.Module):
    """MG-3D pre-training model (see the module doc). ``forward(batch)`` returns the
    intermediates :class:`~medmap.losses.mg3d.MG3DLoss` turns into the loss terms.

    Batch keys (see :class:`medmap.train.mg3d.MG3DCollator`): ``image`` (B,1,D,H,W),
    ``model_modality`` (B,), ``text`` (B, T) pooled report embedding, ``tokens`` (B, L, T) word
    features, ``token_mask`` (B, L) bool, ``input_ids`` (B, L), ``word_mask`` (B, L) bool
    maskable words, ``sentence_index`` (B, L) long (-1: none), ``sentences`` (B, S, T) token-mean
    sentence features, ``sentence_emb`` (B, S, T) separately encoded sentences,
    ``sentence_mask`` (B, S) bool.
    """

    def __init__(self, cfg: MG3DConfig):
        super().__init__()
        missing = [n for n in ("encoder", "embed_dim", "shared_encoder") if getattr(cfg, n) is None]
        if missing:
            raise ConfigError(f"MG3DConfig fields {missing} are None; fill them (pretrain_mg3d "
                              "takes them from model.*) before building the model")
        if not cfg.modalities:
            raise ConfigError("MG3DConfig needs at least one modality")
        if cfg.vocab_size < 1:
            raise ConfigError("MG3DConfig.vocab_size must be the tokenizer's vocabulary size")
        if cfg.mim_guidance not in ("sentence", "word"):
            raise ConfigError(f"mim_guidance must be 'sentence' or 'word', got {cfg.mim_guidance!r}")
        self.cfg = cfg
        d, t, h = cfg.embed_dim, cfg.text_dim, cfg.fusion_heads
        self.experts = ModalityExperts(cfg.modalities, cfg.encoder, d, cfg.shared_encoder)
        self.text_proj = nn.Linear(t, d)            # pooled report embedding -> F_T
        self.word_proj = nn.Linear(t, d)            # word tokens and token-mean sentence features
        self.sentence_proj = nn.Linear(t, d)        # separately encoded sentences (SSM / DFA)
        self.mask_embedding = nn.Parameter(torch.zeros(t))
        self.mim_fusion = FusionStack(d, h, cfg.fusion_layers, cfg.mim_attention, cfg.dropout)
        self.mlm_fusion = FusionStack(d, h, cfg.fusion_layers, cfg.mlm_attention, cfg.dropout)
        self.decoder = VolumeDecoder(d, feature_stride(cfg.encoder), cfg.decoder_min_channels,
                                     cfg.decoder_head_stride)
        self.mlm_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d),
                                      nn.Linear(d, cfg.vocab_size))
        self.text_pool = AttentionPool(d, h)        # per-sentence fused words -> H_T
        self.sentence_attn = CrossModalAttention(d, h)   # sentence queries over volume -> H_S
        self.sentence_norm = nn.LayerNorm(d)
        self.sentence_pool = AttentionPool(d, h)    # H_S -> aggregated (DFA)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))
        nn.init.normal_(self.mask_embedding, std=0.02)

    # -- the downstream interface (same as ModalityAwareCLIP) --------------------------------
    def encode_volume(self, images: torch.Tensor, modality_index: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Projected tokens (B, N, d) of each volume through its modality's expert, and the
        token grid (d, h, w)."""
        out, grid = None, None
        for m in torch.unique(modality_index).tolist():
            rows = (modality_index == m).nonzero(as_tuple=True)[0]
            k = self.experts.key(self.cfg.modalities[m])
            enc = self.experts.encoders[k](images[rows])
            tok = self.experts.proj[k](enc.tokens)                     # (b, N, d)
            grid = tuple(enc.feature_map.shape[2:])
            if out is None:
                out = tok.new_zeros(images.shape[0], *tok.shape[1:])
            out = out.index_copy(0, rows, tok)
        return out, grid

    def encode_image(self, images: torch.Tensor, modality_index: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) unnormalised global visual features F_I (mean over tokens)."""
        return self.encode_volume(images, modality_index)[0].mean(1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) unnormalised global report features F_T from pooled embeddings."""
        return self.text_proj(text)

    # -- pre-training ------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                mim_mask: torch.Tensor | None = None,
                mlm_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The intermediates every enabled loss needs, keyed by the argument names of
        :class:`~medmap.losses.mg3d.MG3DLoss` (``loss(**out)``), and the global features
        ``image_features`` / ``text_features`` (B, d, unnormalised).

        ``mim_mask`` (B,1,D,H,W) / ``mlm_mask`` (B,L) fix the masks (else drawn with
        ``generator`` or the global RNG).
        """
        cfg, L = self.cfg, self.cfg.losses
        img, mod = batch["image"], batch["model_modality"]
        tokens, grid = self.encode_volume(img, mod)                    # (B, N, d)
        f_img = tokens.mean(1)                                         # F_I (B, d)
        f_txt = self.text_proj(batch["text"])                          # F_T (B, d)
        words, tmask = batch["tokens"], batch["token_mask"].bool()     # (B, L, T), (B, L)
        smask = batch["sentence_mask"].bool()                          # (B, S)
        sent = self.word_proj(batch["sentences"])                      # F_S (B, S, d)
        out: dict[str, torch.Tensor] = {
            "image_features": f_img, "text_features": f_txt,
            "logit_scale": self.logit_scale.exp().clamp(max=100.0), "sentence_mask": smask}

        if L.mim or L.cml:
            if L.mim:
                if mim_mask is None:
                    mim_mask = random_volume_mask(img.shape, cfg.mask_patch, cfg.mask_ratio,
                                                  img.device, generator)
                masked_tokens, _ = self.encode_volume(img * ~mim_mask, mod)
            else:
                masked_tokens = tokens
            if cfg.mim_guidance == "sentence":
                guide, gmask = sent, smask
            else:
                guide, gmask = self.word_proj(words), tmask
            h_vol = self.mim_fusion(masked_tokens, guide, None, gmask)  # (B, N, d)
            if L.mim:
                out["mim_pred"] = self.decoder(h_vol, grid, tuple(img.shape[2:]))  # (B,1,D,H,W)
                out["mim_target"], out["mim_mask"] = img, mim_mask
            out["fused_image"] = h_vol.mean(1)                         # H_I (B, d)

        if L.mlm or L.sfr or L.cml:
            words_in = words
            if L.mlm:
                if mlm_mask is None:
                    mlm_mask = random_word_mask(batch["word_mask"].bool(), cfg.mlm_probability,
                                                generator)
                words_in = torch.where(mlm_mask[..., None], self.mask_embedding.to(words.dtype),
                                       words)
            h_words = self.mlm_fusion(self.word_proj(words_in), tokens, tmask, None)  # (B, L, d)
            if L.mlm:   # the vocabulary head only where the loss reads it: masked words
                sel = mlm_mask.bool()                                  # (B, L)
                out["mlm_logits"] = self.mlm_head(h_words[sel])        # (n_masked, V)
                out["mlm_target"], out["mlm_mask"] = batch["input_ids"][sel], None
            if L.sfr or L.cml:
                s_rec = sentence_mean(h_words, batch["sentence_index"], smask.shape[1])  # (B,S,d)
                out["sentence_rec"], out["sentence_features"] = s_rec, sent
                if L.cml:
                    out["fused_text"] = self.text_pool(s_rec, smask)   # H_T (B, d)

        if L.ssm or L.dfa:
            q = self.sentence_proj(batch["sentence_emb"])              # (B, S, d)
            h_s = self.sentence_norm(self.sentence_attn.per_query(tokens, q))   # H_S (B, S, d)
            out["sentence_visual"], out["sentence_emb"] = h_s, batch["sentence_emb"]
            if L.dfa:
                out["sentence_visual_pooled"] = self.sentence_pool(h_s, smask)  # (B, d)
        return out
