"""MedMAP: modality-aware experts (stage 1) and the CSA + CCT classifier (stage 2).

Stage 1, :class:`ModalityAwareCLIP`: one 3D vision encoder per MRI modality (an *expert*) with a
projection into the shared embedding space, a trainable projection of the frozen text encoder's
report embedding, and a learnable temperature. Pair batches ``(volume, its sequence's report)``
give the paper's per-modality contrastive objective; case batches (all of a case's sequences)
add the optional case-level term (the case embedding against the global impression, see
:class:`MedMAPLossConfig`). ``shared_encoder=True`` trains one modality-agnostic encoder instead.

Stage 2, :class:`MedMAPClassifier`, per available modality ``m`` of a case:

* Transformer stream: the modality's (pre-trained) expert -> tokens ``f_swin`` (b, N, d);
* CSA text guidance (``csa_text``): each token attends over the modality's K projected
  class-knowledge descriptions (``"knowledge"``, the default; stored as a buffer, so inference
  needs no text model), or over the case's own report of that modality (``"report"``: only for
  users whose cases carry reports at inference; it leaks the label wherever a report states the
  diagnosis), and is modulated by the attended text vector: ``f_vt = f_swin * (1 + tanh(.))``
  (:class:`~medmap.models.csa.TextGuidance`; identity at initialisation). ``"modality"`` is the
  old per-modality prompt gain ``f_swin * p_m`` (an ablation control), ``"none"`` no text;
* CSA convolutional stream (``use_conv``): a 3D conv stack on the same volume -> ``f_v``;
* CCT (``use_cct``): bidirectional cross-attention between ``f_v`` and ``f_vt``; without the
  conv stream, between ``f_swin`` and the projected class descriptions (Table 2's +CCT row);
* mean + max pooling of both token sets -> the modality's feature (b, d),

then a Transformer layer over the case's *present* modalities (absent ones masked out, never
zero-filled), a masked mean -> ``f_fusion`` (B, d) -> classification head (B, K).

Example:
    >>> import torch
    >>> from medmap.models.medmap import MedMAPConfig, MedMAPClassifier
    >>> cfg = MedMAPConfig.tiny(modalities=["T2WI", "C+A"], classes=["a", "b"])
    >>> model = MedMAPClassifier(cfg, class_prompts=torch.randn(2, 2, cfg.text_dim))
    >>> out = model(torch.randn(3, 2, 1, 32, 32, 32), torch.ones(3, 2, dtype=torch.bool))
    >>> tuple(out["logits"].shape)
    (3, 2)
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from medmap.config import ConfigError, UserError, to_dict
from medmap.models.csa import CrossCognitionBlock, TextGuidance
from medmap.models.encoders import build_encoder
from medmap.models.experts import ModalityExperts
from medmap.models.hub import from_pretrained, register_model
from medmap.models.medmap_config import MedMAPConfig, MedMAPLossConfig, check_stats_head
from medmap.models.regions import (REGIONS, SHAPE_STATS, LesionGeometry, region_pool,
                                   region_stats_per_channel)

@register_model("medmap_clip", MedMAPConfig)
class ModalityAwareCLIP(nn.Module):
    """Stage 1: modality-aware vision-language pre-training model.

    ``forward(images (B,1,D,H,W), modality_index (B,), text (B, text_dim))`` (pairs) or
    ``forward(images (B,M,1,D,H,W), present=(B,M), text=(B,M,text_dim), text_mask=(B,M),
    global_text=(B,text_dim), global_mask=(B,))`` (cases) returns the contrastive loss's
    arguments: normalised ``image_features`` / ``text_features`` (P, d) of the (volume, report)
    pairs, their ``modality`` (P,) and ``logit_scale``; for cases every case holds a row per
    modality (P = B * M, ``pair_mask`` marks the real pairs) and ``case_features`` /
    ``global_features`` (B, d) with ``global_mask`` come too.
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

    def forward(self, images: torch.Tensor, modality_index: torch.Tensor | None = None,
                text: torch.Tensor | None = None, *, present: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, global_text: torch.Tensor | None = None,
                global_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        scale = self.logit_scale.exp().clamp(max=100.0)
        if present is None:                                                # pairs
            v = F.normalize(self.encode_image(images, modality_index), dim=-1)   # (B, d)
            t = F.normalize(self.text_proj(text), dim=-1)                          # (B, d)
            return {"image_features": v, "text_features": t, "modality": modality_index,
                    "logit_scale": scale}
        B, M = present.shape                                               # cases
        vol = images.new_zeros(B, M, self.cfg.embed_dim)                   # (B, M, d)
        for m in range(M):
            rows = present[:, m].nonzero(as_tuple=True)[0]
            if rows.numel():
                e = self.experts.encode(images[rows, m], self.cfg.modalities[m]).mean(1)
                vol = vol.index_put((rows, torch.full_like(rows, m)),
                                    F.normalize(e, dim=-1).to(vol.dtype))   # (autocast: bf16)
        pair = (present & text_mask).flatten()                             # (B*M,)
        out = {"image_features": vol.flatten(0, 1),                        # (B*M, d)
               "text_features": F.normalize(self.text_proj(text), dim=-1).flatten(0, 1),
               "modality": torch.arange(M, device=present.device).repeat(B),
               "pair_mask": pair, "logit_scale": scale}
        w = present.unsqueeze(-1).to(vol.dtype)
        out["case_features"] = F.normalize((vol * w).sum(1), dim=-1)       # (B, d)
        if global_text is not None:
            out["global_features"] = F.normalize(self.text_proj(global_text), dim=-1)  # (B, d)
            out["global_mask"] = global_mask
        return out


def _pool(tokens: torch.Tensor) -> torch.Tensor:
    """(b, N, d) -> (b, 2d): mean and max over tokens. Lesions are small against the volume;
    the max keeps their response where the mean alone dilutes it."""
    return torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1)


def _mask_pool(tokens: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(b, N, d), weights (b, N) in [0, 1] -> (b, 2d): the weighted mean inside the mask and
    the mean outside it. A row without mask (all weights 0) pools its lesion part uniformly."""
    w = w.to(tokens.dtype)
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
    inside = (tokens * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)
    out_w = 1 - w
    outside = (tokens * out_w[..., None]).sum(1) / out_w.sum(1, keepdim=True).clamp_min(1e-6)
    return torch.cat([inside, outside], dim=-1)


@register_model("medmap_classifier", MedMAPConfig)     # the prompt buffers come with the weights
class MedMAPClassifier(nn.Module):
    """Stage 2: multi-modality abnormality classifier with CSA and CCT (see module doc).

    ``class_prompts`` (M, C, text_dim): the frozen text encoder's embedding of each class's
    knowledge description per modality; ``modality_prompts`` (M, text_dim): each modality's
    prompt (the ``"modality"`` control). Both are buffers saved with the weights.
    """

    def __init__(self, cfg: MedMAPConfig, class_prompts: torch.Tensor | None = None,
                 modality_prompts: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        M, C, d, T = len(cfg.modalities), len(cfg.classes), cfg.embed_dim, cfg.text_dim
        if M == 0 or C == 0:
            raise ConfigError("MedMAPConfig needs at least one modality and one class")
        self.experts = ModalityExperts(cfg.modalities, cfg.encoder, d, cfg.shared_encoder,
                                       cfg.expert_checkpoint)
        self.text_proj = nn.Linear(T, d)
        for name, value, shape in (("class_prompts", class_prompts, (M, C, T)),
                                   ("modality_prompts", modality_prompts, (M, T))):
            value = torch.zeros(shape) if value is None else value
            if tuple(value.shape) != shape:
                raise UserError(f"{name} must be {shape} (modalities, classes, text_dim), got "
                                f"{tuple(value.shape)}")
            self.register_buffer(name, value.float().clone())
        if cfg.use_conv:
            # One conv stream per modality (like the experts); LayerNorm puts its tokens on the
            # Transformer tokens' scale.
            keys = ["shared"] if cfg.shared_encoder else cfg.modalities
            conv_cfg = (dataclasses.replace(cfg.conv_stream, in_channels=2) if cfg.mask_channel
                        else cfg.conv_stream)
            self.conv_stream = nn.ModuleDict({k: build_encoder(conv_cfg) for k in keys})
            width = next(iter(self.conv_stream.values())).out_dim
            self.conv_proj = nn.ModuleDict({k: nn.Sequential(nn.Linear(width, d), nn.LayerNorm(d))
                                            for k in keys})
        if cfg.use_cct:
            self.cct = nn.ModuleList([CrossCognitionBlock(d, cfg.cct_heads, cfg.dropout)
                                      for _ in range(cfg.cct_layers)])
        two_streams = cfg.use_conv or cfg.use_cct
        extra = 0
        if cfg.region_scales:
            chans = next(iter(self.experts.encoders.values())).feature_channels
            bad = [s for s in cfg.region_scales if not 0 <= s < len(chans)]
            if bad:
                raise ConfigError(f"model.region_scales {bad}: the encoder has stages "
                                  f"0..{len(chans) - 1}")
            extra = len(REGIONS) * sum(chans[s] for s in cfg.region_scales)
            self.region_norm = nn.LayerNorm(extra)
        if cfg.region_intensity:
            keys = ["shared"] if cfg.shared_encoder else cfg.modalities
            n_stats = 2 * len(REGIONS)                           # mean and sd per region
            self.intensity_norm = nn.ModuleDict({k: nn.BatchNorm1d(n_stats) for k in keys})
            extra += n_stats
        if cfg.region_shape:
            self.shape_norm = nn.BatchNorm1d(len(SHAPE_STATS))     # one per case, shared
            extra += len(SHAPE_STATS)
        self.merge = nn.Linear((4 if two_streams else 2) * d + extra, d)
        # Cross-modality fusion: a Transformer layer over the present modalities' tokens
        # (modality embeddings as positions, absent ones masked out), then a masked mean.
        self.modality_embed = nn.Parameter(torch.zeros(M, d))
        self.fusion = nn.TransformerEncoderLayer(d, cfg.cct_heads, 2 * d, cfg.dropout,
                                                 activation="gelu", batch_first=True,
                                                 norm_first=True)
        self.norm = nn.LayerNorm(d)
        if cfg.modality_pool == "concat":
            self.missing_embed = nn.Parameter(torch.zeros(M, d))
            self.concat_proj = nn.Linear(M * d, d)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, C))
        check_stats_head(cfg)
        if cfg.stats_head:                                   # (B, M * 8) -> (B, C), from zero
            self.stats_head = nn.Linear(M * 2 * len(REGIONS), C)
            nn.init.zeros_(self.stats_head.weight)
            nn.init.zeros_(self.stats_head.bias)
        if cfg.losses.modality_weight > 0:
            self.modality_heads = nn.ModuleDict({m: nn.Linear(d, C) for m in cfg.modalities})
        nn.init.normal_(self.modality_embed, std=0.02)
        if cfg.csa_text in ("knowledge", "report"):
            self.guidance = TextGuidance(d, cfg.cct_heads, cfg.dropout)

    @torch.no_grad()
    def set_stats_prior(self, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor) -> None:
        """Start the stats head from a linear model fitted outside (``stats_head_init: fit``):
        every modality's statistics batch norm gets the running ``mean`` / ``var`` (M, 8) of
        that modality's training statistics (scale 1, shift 0), and ``stats_head`` the
        ``weight`` (C, M * 8) and ``bias`` (C,) of a linear classifier on the statistics so
        standardised (absent modalities 0), slot m * 8 + k being modality m's statistic k."""
        if not self.cfg.stats_head:
            raise ValueError("set_stats_prior needs model.stats_head: true")
        M, C, k = len(self.cfg.modalities), len(self.cfg.classes), 2 * len(REGIONS)
        if mean.shape != (M, k) or var.shape != (M, k) or weight.shape != (C, M * k) \
                or bias.shape != (C,):
            raise ValueError(f"set_stats_prior: expected mean / var ({M}, {k}), weight "
                             f"({C}, {M * k}), bias ({C},); got {tuple(mean.shape)}, "
                             f"{tuple(var.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
        if self.cfg.shared_encoder and not (torch.allclose(mean, mean[:1].expand_as(mean))
                                            and torch.allclose(var, var[:1].expand_as(var))):
            raise ValueError("set_stats_prior: a shared encoder has one statistics norm for "
                             "every modality; pass moments pooled over the modalities")
        for m, name in enumerate(self.cfg.modalities):
            norm = self.intensity_norm[self.experts.key(name)]
            norm.running_mean.copy_(mean[m])
            norm.running_var.copy_(var[m])
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        self.stats_head.weight.copy_(weight)
        self.stats_head.bias.copy_(bias)

    def class_texts(self) -> torch.Tensor:
        """The projected class descriptions of every modality: (M, C, d)."""
        return self.text_proj(self.class_prompts)

    def text_guidance(self, f_swin: torch.Tensor, m: int, report: torch.Tensor | None = None,
                      report_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """CSA's text-guided tokens of modality ``m``: ``(f_vt (b, N, d), the attended text
        vector of each token (b, N, d), attention over the text vectors (b, N, K))``."""
        mod = torch.full((f_swin.shape[0],), m, dtype=torch.long, device=f_swin.device)
        return self._guide(f_swin, mod, report, report_mask)

    def _guide(self, f_swin: torch.Tensor, mod: torch.Tensor, report: torch.Tensor | None,
               report_mask: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`text_guidance` of rows from any modalities: ``mod`` (P,) each row's modality
        index, ``report`` (P, text_dim) / ``report_mask`` (P,) each row's report."""
        mode = self.cfg.csa_text
        if mode == "knowledge":                              # (M, C, d) -> (P, C, d)
            return self.guidance(f_swin, self.class_texts()[mod])
        if mode == "report":
            if report is None:
                raise UserError("csa_text 'report' needs each case's report embeddings "
                                "(reports=(B, M, text_dim)); this model reads reports at "
                                "inference")
            return self.guidance(f_swin, self.text_proj(report)[:, None], report_mask[:, None])
        if mode == "modality":                               # (P, 1, d) gain per row
            return f_swin * self.text_proj(self.modality_prompts)[mod][:, None], None, None
        return f_swin, None, None

    def _pool_tokens(self, tokens: torch.Tensor, lesion: LesionGeometry | None,
                     spatial: bool = True) -> torch.Tensor:
        """(b, N, d) -> (b, 2d) by ``cfg.pooling``; text tokens (``spatial=False``) always
        mean + max."""
        if self.cfg.pooling == "mask" and spatial:
            self._need_mask(lesion)
            return _mask_pool(tokens, lesion.token_weights(tokens.shape[1]))
        return _pool(tokens)

    @staticmethod
    def reads_mask(cfg: MedMAPConfig) -> bool:
        """Whether a model of ``cfg`` reads the lesion mask (``cfg.mask_key``) at inference."""
        return (cfg.pooling == "mask" or (cfg.mask_channel and cfg.use_conv)
                or bool(cfg.region_scales) or cfg.region_intensity or cfg.region_shape)

    @property
    def needs_mask(self) -> bool:
        """Whether the model reads the lesion mask (``cfg.mask_key``) at inference."""
        return self.reads_mask(self.cfg)

    def _need_mask(self, lesion: torch.Tensor | None) -> None:
        if lesion is None:
            raise UserError(f"this model reads the lesion mask (pooling 'mask' / mask_channel); "
                            f"pass lesion_mask=(B, 1, D, H, W), the case's "
                            f"'{self.cfg.mask_key}' mask preprocessed like its volumes")

    def _standardise(self, norm: nn.BatchNorm1d, stats: torch.Tensor,
                     cases: int | None = None) -> torch.Tensor:
        """``norm(stats)``; a training batch of one row, or of one case (``cases``), uses the
        running statistics (batch norm needs 2 cases to train)."""
        if self.training and (stats.shape[0] if cases is None else cases) < 2:
            return F.batch_norm(stats, norm.running_mean, norm.running_var, norm.weight,
                                norm.bias, False, 0.0, norm.eps)
        return norm(stats)

    def modality_features(self, images: torch.Tensor, present: torch.Tensor,
                          reports: torch.Tensor | None = None,
                          report_mask: torch.Tensor | None = None,
                          lesion: LesionGeometry | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                     torch.Tensor | None]:
        """The feature of every present (case, sequence) pair: ``(rows (P,), modality (P,),
        features (P, d), standardised region statistics (P, 8) or None)``, pairs in modality
        order. ``images`` (B, M, 1, D, H, W), ``present`` (B, M); ``lesion``: the batch's
        :class:`~medmap.models.regions.LesionGeometry` (mask-reading models).

        What has weights per modality (expert, conv stream, the statistics' batch norms) runs
        once per modality on its present cases (a shared encoder's one statistics norm once on
        every present pair); what is shared (text guidance, CCT, pooling,
        merge: row-wise modules without batch statistics) runs once over all M * B slots
        stacked on the batch axis, absent pairs as zero rows that are dropped at the end: the
        same computation as one call per modality in about M times fewer (small) kernels, and
        one shape per batch size whatever is missing (a shape per count of present pairs
        filled oneDNN's primitive cache, ~50 MB per epoch)."""
        cfg, (B, M) = self.cfg, present.shape
        swin, conv, maps = [None] * M, [None] * M, [None] * M
        for m, name in enumerate(cfg.modalities):
            rows = present[:, m].nonzero(as_tuple=True)[0]
            if not rows.numel():
                continue
            full = rows.numel() == B

            def slots(t: torch.Tensor) -> torch.Tensor:                 # (b, ...) -> (B, ...)
                return t if full else t.new_zeros((B, *t.shape[1:])).index_copy(0, rows, t)

            x = images[:, m] if full else images[rows, m]               # (b, 1, D, H, W)
            if cfg.region_scales:
                f, fmaps = self.experts.encode(x, name, maps=True)
                maps[m] = [slots(fmaps[s]) for s in cfg.region_scales]
            else:
                f = self.experts.encode(x, name)                         # (b, N, d) f_swin
            swin[m] = slots(f)
            if cfg.use_conv:
                k, xin = self.experts.key(name), x
                if cfg.mask_channel:
                    self._need_mask(lesion)
                    xin = torch.cat([x, lesion.rows(rows).mask.to(x.dtype)], 1)  # (b, 2, ...)
                conv[m] = slots(self.conv_proj[k](self.conv_stream[k](xin).tokens))  # f_v
        some = next(m for m in range(M) if swin[m] is not None)
        for lst in (swin, conv, maps):                                   # absent everywhere
            for m in range(M):
                if lst[m] is None and lst[some] is not None:
                    lst[m] = ([torch.zeros_like(t) for t in lst[some]] if lst is maps
                              else torch.zeros_like(lst[some]))
        mod = torch.arange(M, device=present.device).repeat_interleave(B)   # (M*B,) slot m*B+b
        case = torch.arange(B, device=present.device).repeat(M)             # (M*B,)
        keep = present.t().reshape(-1)                                      # (M*B,)
        rep = None if reports is None else reports[case, mod]               # (M*B, text_dim)
        rmask = None if report_mask is None else report_mask[case, mod] & keep
        les = None if lesion is None else lesion.rows(case)
        f_swin = self._guide(torch.cat(swin), mod, rep, rmask)[0]        # (M*B, N, d) f_vt
        other = None
        if cfg.use_conv:
            other = torch.cat(conv)                                      # (M*B, N', d)
        elif cfg.use_cct:
            other = self.class_texts()[mod]                          # (M*B, C, d) class text
        if cfg.use_cct:
            for blk in self.cct:
                other, f_swin = blk(other, f_swin)
        parts = [self._pool_tokens(f_swin, les)]                         # (M*B, 2d)
        if other is not None:
            parts.insert(0, self._pool_tokens(other, les, spatial=cfg.use_conv))
        if cfg.region_scales:
            self._need_mask(les)
            pooled = []
            for i in range(len(cfg.region_scales)):                      # (M*B, 4 * C_s)
                fmap = torch.cat([mp[i] for mp in maps])
                pooled.append(region_pool(fmap, weights=les.region_weights(
                    fmap.shape[2:], fmap.dtype)).flatten(1))
            parts.append(self.region_norm(torch.cat(pooled, dim=-1)))
        stats = None
        if cfg.region_intensity:
            self._need_mask(les)
            every = region_stats_per_channel(images[:, :, 0], lesion.regions)  # (B, M, 8)
            stats = self._per_modality_norm(
                every.transpose(0, 1), present,                          # (M, B, 8)
                [self.intensity_norm[self.experts.key(n)] for n in cfg.modalities],
                pooled=cfg.shared_encoder)
            parts.append(stats.to(parts[0].dtype))
        if cfg.region_shape:       # one row per case, standardised once, copied to its slots
            self._need_mask(les)
            per_case = lesion.shape_features                              # (B, 8)
            has = present.any(1).nonzero(as_tuple=True)[0]
            norm_case = per_case.new_zeros(per_case.shape)
            if has.numel():
                norm_case[has] = self._standardise(self.shape_norm, per_case[has])
            shape = (norm_case.expand(M, -1, -1)                          # (M, B, 8), absent 0
                     * present.t()[..., None].to(norm_case.dtype)).flatten(0, 1)
            parts.append(shape.to(parts[0].dtype))
        idx = keep.nonzero(as_tuple=True)[0]                             # present slots
        f = self.merge(torch.cat(parts, dim=-1))[idx]                    # (P, d)
        return case[idx], mod[idx], f, None if stats is None else stats[idx]

    def _per_modality_norm(self, values: torch.Tensor, present: torch.Tensor,
                           norms: list[nn.BatchNorm1d], pooled: bool = False) -> torch.Tensor:
        """values (M, B, k) -> (M*B, k): each modality's present rows through its own batch
        norm (batch statistics of those rows only), absent ones 0. ``pooled``: ``norms`` are
        one shared module (a shared encoder's), called once on every present pair, so it trains
        on the pooled moments it evaluates with and ``stats_head_init: fit`` standardises by."""
        out = values.new_zeros(values.shape)
        if pooled:
            assert all(n is norms[0] for n in norms), "pooled needs one shared norm"
            keep = present.t()                                           # (M, B)
            out[keep] = self._standardise(norms[0], values[keep],        # (P, k)
                                          cases=int(present.any(1).sum()))
            return out.flatten(0, 1)
        for m, norm in enumerate(norms):
            rows = present[:, m].nonzero(as_tuple=True)[0]
            if rows.numel():
                out[m, rows] = self._standardise(norm, values[m, rows])
        return out.flatten(0, 1)

    def forward(self, images: torch.Tensor, present: torch.Tensor,
                text: torch.Tensor | None = None, reports: torch.Tensor | None = None,
                report_mask: torch.Tensor | None = None,
                lesion_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """images (B, M, 1, D, H, W), present (B, M) bool -> ``logits`` (B, K), ``probs``,
        ``fusion`` (B, d). ``text`` (B, text_dim): the frozen embedding of each case's report
        (training only) -> also ``text_features`` (B, d), the KL term's target (detached: the
        KL term cannot move it). ``reports`` (B, M, text_dim) / ``report_mask`` (B, M): the
        per-sequence report embeddings ``csa_text="report"`` reads. ``lesion_mask``
        (B, 1, D, H, W): the lesion mask on the volumes' grid (``pooling="mask"`` models).
        With ``losses.modality_weight`` > 0 also ``modality_logits`` (B, M, K), each sequence's
        own prediction, and ``present``."""
        B, M = present.shape
        if M != len(self.cfg.modalities):
            raise ValueError(f"expected {len(self.cfg.modalities)} modalities "
                             f"{self.cfg.modalities}, got {M}")
        if not present.any(1).all():
            empty = (~present.any(1)).nonzero().flatten().tolist()
            raise ValueError(f"batch rows {empty} have no modality present; every case needs one")
        geometry = None if lesion_mask is None else LesionGeometry(lesion_mask)  # once per batch
        rows, mod, f, got = self.modality_features(images, present, reports, report_mask,
                                                   geometry)
        feats = images.new_zeros(B, M, self.cfg.embed_dim).index_put(   # (B, M, d)
            (rows, mod), f.to(images.dtype))
        stats = None
        if self.cfg.stats_head:                                  # (B, M, 8), absent slots 0
            stats = images.new_zeros(B, M, 2 * len(REGIONS)).index_put(
                (rows, mod), got.to(images.dtype))
        per_modality = None
        if self.cfg.losses.modality_weight > 0:                   # (B, M, K), absent rows unused
            per_modality = torch.stack([self.modality_heads[name](feats[:, m])
                                        for m, name in enumerate(self.cfg.modalities)], 1)
        feats = feats + self.modality_embed                      # (B, M, d)
        feats = self.fusion(feats, src_key_padding_mask=~present)  # absent tokens never attended
        w = present.unsqueeze(-1).to(feats.dtype)                # (B, M, 1)
        if self.cfg.modality_pool == "concat":                   # (B, M, d) -> (B, M*d) -> (B, d)
            slots = torch.where(present.unsqueeze(-1), feats, self.missing_embed.to(feats.dtype))
            fusion = self.norm(self.concat_proj(slots.flatten(1)))
        else:
            fusion = self.norm((feats * w).sum(1) / w.sum(1))    # (B, d) mean over present
        logits = self.head(fusion)                               # (B, K)
        if stats is not None:                                    # (B, M * 8) -> (B, K)
            logits = logits + self.stats_head(stats.flatten(1).to(logits.dtype))
        out = {"logits": logits, "probs": logits.softmax(-1), "fusion": fusion}
        if per_modality is not None:
            out["modality_logits"], out["present"] = per_modality, present
        if text is not None:
            out["text_features"] = self.text_features(text)
        return out

    def text_features(self, text: torch.Tensor) -> torch.Tensor:
        """The KL target ``f_t`` (B, d): the projected report embedding, detached."""
        with torch.no_grad():
            return self.text_proj(text)


__all__ = ["MedMAPConfig", "MedMAPLossConfig", "ModalityExperts", "ModalityAwareCLIP",
           "MedMAPClassifier", "load_pretrained_experts", "CrossCognitionBlock"]


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
            raise UserError(f"{pretrained}: pre-trained {name} {a} differs from the fine-tuning "
                            f"config's {b}; use the same model.{name} in both stages")
    if not fc.shared_encoder:
        missing = [m for m in fc.modalities if m not in pc.modalities]
        if missing:
            raise UserError(f"{pretrained}: no pre-trained expert for modalities {missing} "
                            f"(experts: {pc.modalities}); pre-train them or drop them from "
                            "data.modalities")
    for k in model.experts.encoders:
        model.experts.encoders[k].load_state_dict(clip.experts.encoders[k].state_dict())
        model.experts.proj[k].load_state_dict(clip.experts.proj[k].state_dict())
    model.text_proj.load_state_dict(clip.text_proj.state_dict())
    return model
