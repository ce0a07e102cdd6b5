"""MG-3D's six pre-training losses: pure functions, their weighted sum and :class:`MG3DLoss`.

Intra-patient (paper eq. 2-10): MIM (masked sub-volume reconstruction), MLM (masked word
prediction), SFR (sentence-level feature reconstruction), CML (cross-modal global alignment).
Inter-patient (eq. 12-14): SSM (inter-patient sentence-semantics similarity matching), DFA
(disentangled fine-grained feature aggregation). Total (eq. 10, 14, 15)::

    L = lambda_alpha (L_MIM + L_MLM) + lambda_beta (L_SFR + L_CML) + lambda_gamma (L_SSM + L_DFA)
        + itc_weight * lambda_beta * L_ITC

``L_ITC`` (symmetric InfoNCE between the uni-modal global volume and report features) is not in
the paper; it keeps those two features in one space so zero-shot classification and retrieval
work after pre-training (see ``docs/method.md``). Every term can be switched off.

:class:`MG3DLoss` is the module the training loop calls as ``loss(**model(batch))``: the keys of
:meth:`medmap.models.mg3d.MG3DModel.forward`'s output are its argument names (open_clip's
model/loss contract); it returns every enabled ``<name>_loss`` term and their weighted ``loss``.

Example:
    >>> import torch
    >>> a = torch.eye(3)
    >>> float(info_nce(a, a, torch.tensor(10.0))) < 1e-3
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medmap.config import ConfigError

__all__ = ["MG3DLoss", "MG3DLossConfig", "LOSS_NAMES", "mim_loss", "mlm_loss", "sfr_loss", "info_nce",
           "cml_loss", "ssm_loss", "dfa_loss", "itc_loss", "weighted_total"]

LOSS_NAMES = ("mim", "mlm", "sfr", "cml", "ssm", "dfa", "itc")


@dataclass
class MG3DLossConfig:
    """Which MG-3D losses run and their weights ([lambda_alpha, lambda_beta, lambda_gamma] =
    [1.0, 0.1, 0.1], the paper's setting). ``itc`` is our addition (see the module doc)."""

    mim: bool = True
    mlm: bool = True
    sfr: bool = True
    cml: bool = True
    ssm: bool = True
    dfa: bool = True
    itc: bool = True
    lambda_alpha: float = 1.0     # MIM + MLM
    lambda_beta: float = 0.1      # SFR + CML (and ITC)
    lambda_gamma: float = 0.1     # SSM + DFA
    itc_weight: float = 1.0       # ITC weight relative to lambda_beta

    def enabled(self) -> list[str]:
        return [n for n in LOSS_NAMES if getattr(self, n)]

    def weight(self, name: str) -> float:
        if name in ("mim", "mlm"):
            return self.lambda_alpha
        if name in ("sfr", "cml"):
            return self.lambda_beta
        if name in ("ssm", "dfa"):
            return self.lambda_gamma
        if name == "itc":
            return self.lambda_beta * self.itc_weight
        raise KeyError(name)


def mim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 2: MSE over the masked voxels only.

    pred, target: (B, 1, D, H, W); mask: (B, 1, D, H, W) bool/0-1, 1 = masked (to reconstruct).
    Returns sum(mask * (pred - target)^2) / sum(mask); unmasked voxels never contribute.
    """
    m = mask.to(pred.dtype)                                   # (B, 1, D, H, W)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)


def mlm_loss(logits: torch.Tensor, target_ids: torch.Tensor,
             masked: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4: cross-entropy of the original token ids at the masked positions only.

    logits: (B, L, V); target_ids: (B, L) long; masked: (B, L) bool, True = masked word. Or,
    with ``masked=None``, logits (n_masked, V) and target_ids (n_masked,) of the masked
    positions already selected (what :class:`~medmap.models.mg3d.MG3DModel` returns: the head
    runs on masked words only). Mean over masked positions (0 with a graph when none).
    """
    if masked is not None:
        sel = masked.bool()                                   # (B, L)
        logits, target_ids = logits[sel], target_ids[sel]     # (n_masked, V), (n_masked,)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target_ids)


def _cos_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., n, d), (..., m, d) -> (..., n, m) cosine similarities."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(-1, -2)


def sfr_loss(rec: torch.Tensor, orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 5-6: per patient, 1/2 * mean_{s,t} (Sim(F_S, S_rec)[s, t] - I[s, t])^2, mean over patients.

    rec: (B, S, d) reconstructed word features aggregated per sentence (S_rec);
    orig: (B, S, d) original sentence features (F_S); mask: (B, S) bool, True = real sentence.
    ``Sim[s, t] = cos(F_S[s], S_rec[t])``: each reconstructed sentence must match its own
    original sentence and be orthogonal to the report's other sentences. The squared Frobenius
    norm is averaged over the S_b^2 valid entries so reports of any length weigh the same.
    """
    sim = _cos_matrix(orig, rec)                              # (B, S, S)
    eye = torch.eye(sim.shape[-1], device=sim.device, dtype=sim.dtype)
    m = mask.to(sim.dtype)
    pair = m[:, :, None] * m[:, None, :]                      # (B, S, S) valid entries
    per = 0.5 * ((sim - eye) ** 2 * pair).sum((1, 2)) / pair.sum((1, 2)).clamp_min(1.0)   # (B,)
    has = mask.any(1)
    if not has.any():
        return sim.sum() * 0.0
    return per[has].mean()


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """One-directional InfoNCE: -1/B sum_i log softmax_j(<a_i, p_j> * scale)[i].

    anchor, positive: (B, d) (L2-normalised here); logit_scale: scalar = 1 / temperature.
    """
    a, p = F.normalize(anchor.float(), dim=-1), F.normalize(positive.float(), dim=-1)
    logits = logit_scale * a @ p.t()                          # (B, B)
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def cml_loss(f_img: torch.Tensor, h_img: torch.Tensor, f_txt: torch.Tensor, h_txt: torch.Tensor,
             logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7-9: ``(L_T->I, L_I->T)``; L_CML is their sum.

    L_T->I aligns the uni-modal global volume feature F_I (B, d) with the sentence-informed
    volume feature H_I (B, d) over the batch; L_I->T aligns the global report feature F_T (B, d)
    with the volume-informed text feature H_T (B, d). Each is one-directional InfoNCE with the
    uni-modal feature as the anchor, as in the paper.
    """
    return info_nce(f_img, h_img, logit_scale), info_nce(f_txt, h_txt, logit_scale)


def ssm_loss(h: torch.Tensor, f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 12: mean over patient pairs i < j of the mean absolute difference between
    Sim(F_S^i, F_S^j) and Sim(H_S^i, H_S^j) (cosine similarity matrices, S_i x S_j).

    h: (B, S, d) sentence-specific visual features H_S; f: (B, S, e) sentence features F_S
    (frozen text encoder, each sentence encoded alone; need not share h's width);
    mask: (B, S) bool real sentences. Zero when both inter-patient similarity structures agree.
    """
    B = h.shape[0]
    if B < 2:
        return h.sum() * 0.0
    hn, fn = F.normalize(h.float(), dim=-1), F.normalize(f.float(), dim=-1)
    sim_h = torch.einsum("isd,jtd->ijst", hn, hn)             # (B, B, S, S)
    sim_f = torch.einsum("isd,jtd->ijst", fn, fn)             # (B, B, S, S)
    m = mask.to(sim_h.dtype)
    valid = m[:, None, :, None] * m[None, :, None, :]         # (B, B, S, S)
    per_pair = ((sim_h - sim_f).abs() * valid).sum((2, 3)) / valid.sum((2, 3)).clamp_min(1.0)
    iu = torch.triu_indices(B, B, offset=1, device=h.device)
    keep = (mask.any(1)[iu[0]] & mask.any(1)[iu[1]])
    if not keep.any():
        return h.sum() * 0.0
    return per_pair[iu[0], iu[1]][keep].mean()                # average over the B(B-1)/2 pairs


def dfa_loss(h_agg: torch.Tensor, f_img: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Eq. 13: InfoNCE with the aggregated sentence-specific visual feature H_S (B, d) as the
    anchor and the global visual features F_I (B, d) of the batch's patients as candidates."""
    return info_nce(h_agg, f_img, logit_scale)


def itc_loss(f_img: torch.Tensor, f_txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between global volume F_I (B, d) and report F_T (B, d) features
    (not in the paper; keeps zero-shot / retrieval features aligned)."""
    return 0.5 * (info_nce(f_img, f_txt, logit_scale) + info_nce(f_txt, f_img, logit_scale))


def weighted_total(terms: dict[str, torch.Tensor], cfg: MG3DLossConfig) -> torch.Tensor:
    """sum over enabled losses of weight * ``terms[name + '_loss']`` (missing terms skipped)."""
    total = None
    for name in cfg.enabled():
        t = terms.get(f"{name}_loss")
        if t is None:
            continue
        total = cfg.weight(name) * t if total is None else total + cfg.weight(name) * t
    if total is None:
        raise ConfigError("every MG-3D loss is switched off; enable at least one in mg3d.losses")
    return total


class MG3DLoss(nn.Module):
    """The enabled MG-3D losses of the model's intermediates (see the module doc).

    Every argument is an output key of :meth:`~medmap.models.mg3d.MG3DModel.forward`; a term's
    inputs are ``None`` when its branch is switched off. Returns ``<name>_loss`` for every
    computed term, ``cml_t2i`` / ``cml_i2t`` (detached, for logging) and the weighted ``loss``.
    """

    def __init__(self, cfg: MG3DLossConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, *, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor,
                mim_pred: torch.Tensor | None = None, mim_target: torch.Tensor | None = None,
                mim_mask: torch.Tensor | None = None,
                mlm_logits: torch.Tensor | None = None, mlm_target: torch.Tensor | None = None,
                mlm_mask: torch.Tensor | None = None,
                sentence_rec: torch.Tensor | None = None,
                sentence_features: torch.Tensor | None = None,
                sentence_mask: torch.Tensor | None = None,
                fused_image: torch.Tensor | None = None, fused_text: torch.Tensor | None = None,
                sentence_visual: torch.Tensor | None = None,
                sentence_emb: torch.Tensor | None = None,
                sentence_visual_pooled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        c = self.cfg
        out: dict[str, torch.Tensor] = {}
        if c.mim:
            out["mim_loss"] = mim_loss(mim_pred, mim_target, mim_mask)
        if c.mlm:
            out["mlm_loss"] = mlm_loss(mlm_logits, mlm_target, mlm_mask)
        if c.sfr:
            out["sfr_loss"] = sfr_loss(sentence_rec, sentence_features, sentence_mask)
        if c.cml:
            t2i, i2t = cml_loss(image_features, fused_image, text_features, fused_text,
                                logit_scale)
            out["cml_loss"] = t2i + i2t
            out["cml_t2i"], out["cml_i2t"] = t2i.detach(), i2t.detach()
        if c.ssm:
            out["ssm_loss"] = ssm_loss(sentence_visual, sentence_emb, sentence_mask)
        if c.dfa:
            out["dfa_loss"] = dfa_loss(sentence_visual_pooled, image_features, logit_scale)
        if c.itc:
            out["itc_loss"] = itc_loss(image_features, text_features, logit_scale)
        out["loss"] = weighted_total(out, c)
        return out
