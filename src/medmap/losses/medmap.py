"""MedMAP fine-tuning objective (paper eq. 2-4) with the ramp-up / ramp-down weights.

``L = lambda_c * BCE(X_prob, one_hot(y)) + lambda_s * KL(f_t, f_fusion)`` with
``lambda_c = 0.1 * exp(-5 (1 - t / t_max))`` and ``lambda_s = 0.1 * exp(-5 t / t_max)``,
``t`` the current epoch.

The KL term compares two distributions over the feature dimensions: both vectors are
L2-normalised, divided by a temperature ``tau`` and soft-maxed,
``KL(softmax(f_t / tau) || softmax(f_fusion / tau))`` (batch mean), with ``f_t`` the projected
embedding of the case's report and ``f_fusion`` the fused image feature. The target ``f_t`` is
detached by the model (:meth:`~medmap.models.medmap.MedMAPClassifier.text_features`), so the
term pulls the image feature towards its report and can never be lowered by moving the text
side to a constant. Reports enter training only.

Example:
    >>> round(ramp_weights(0, 10)[0], 5), round(ramp_weights(0, 10)[1], 5)
    (0.00067, 0.1)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medmap.config import ConfigError


def ramp_weights(epoch: int | float, max_epochs: int | float, cls_peak: float = 0.1,
                 kl_peak: float = 0.1) -> tuple[float, float]:
    """(lambda_c, lambda_s) at ``epoch`` of ``max_epochs`` (paper's ramp-up / ramp-down; both
    peak at 0.1 in the paper)."""
    if max_epochs <= 0:
        raise ConfigError(f"max_epochs must be > 0, got {max_epochs}")
    r = min(max(epoch / max_epochs, 0.0), 1.0)
    return cls_peak * math.exp(-5.0 * (1.0 - r)), kl_peak * math.exp(-5.0 * r)


def loss_weights(epoch: int | float, max_epochs: int | float, weighting: str = "ramp",
                 cls_weight: float = 0.1, kl_weight: float = 0.1) -> tuple[float, float]:
    """(lambda_c, lambda_s): the paper's ramps peaking at ``cls_weight`` / ``kl_weight``
    (``weighting="ramp"``), or both held constant (``"constant"``).

    Example:
        >>> loss_weights(0, 10, "constant", 1.0, 0.05)
        (1.0, 0.05)
    """
    if weighting == "constant":
        return float(cls_weight), float(kl_weight)
    if weighting != "ramp":
        raise ConfigError(f"loss weighting must be 'ramp' or 'constant', got {weighting!r}")
    return ramp_weights(epoch, max_epochs, cls_weight, kl_weight)


def kl_alignment(f_t: torch.Tensor, f_fusion: torch.Tensor,
                 temperature: float = 0.1) -> torch.Tensor:
    """KL(softmax(n(f_t) / tau) || softmax(n(f_fusion) / tau)) averaged over the batch, with
    ``n`` the L2 normalisation; both (B, d)."""
    if temperature <= 0:
        raise ConfigError(f"kl temperature must be > 0, got {temperature}")
    p = F.log_softmax(F.normalize(f_t, dim=-1) / temperature, -1)
    q = F.log_softmax(F.normalize(f_fusion, dim=-1) / temperature, -1)
    return F.kl_div(q, p, log_target=True, reduction="batchmean")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "bce",
                        label_smoothing: float = 0.0,
                        class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``"bce"`` (the paper's: sigmoid BCE against one-hot labels, mean over B x K) or ``"ce"``
    (softmax cross-entropy, mean over B); ``class_weights`` (K,) weights each case by its
    class, normalised so the weights of the batch average to 1."""
    K = logits.shape[-1]
    if kind == "ce":
        per = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    elif kind == "bce":
        target = F.one_hot(labels, K).to(logits.dtype)                     # (B, K)
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / K
        per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    else:
        raise ConfigError(f"classification loss must be 'bce' or 'ce', got {kind!r}")
    if class_weights is None:
        return per.mean()
    w = class_weights.to(per)[labels]                                      # (B,)
    return (per * w).sum() / w.sum().clamp_min(1e-12)


def medmap_loss(logits: torch.Tensor, labels: torch.Tensor, fusion: torch.Tensor,
                text_features: torch.Tensor | None, epoch: int | float,
                max_epochs: int | float, temperature: float = 0.1, *, cls_loss: str = "bce",
                weighting: str = "ramp", cls_weight: float = 0.1, kl_weight: float = 0.1,
                label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None,
                ) -> dict[str, torch.Tensor]:
    """Named loss terms: ``cls_loss`` (:func:`classification_loss`), ``kl_loss``, their
    weights ``lambda_c`` / ``lambda_s`` (:func:`loss_weights`) and the weighted total
    ``loss``. The defaults are the paper's objective (BCE, ramps peaking at 0.1)."""
    lam_c, lam_s = loss_weights(epoch, max_epochs, weighting, cls_weight, kl_weight)
    cls = classification_loss(logits, labels, cls_loss, label_smoothing, class_weights)
    kl = (kl_alignment(text_features, fusion, temperature)
          if text_features is not None else logits.new_zeros(()))
    return {"loss": lam_c * cls + lam_s * kl, "cls_loss": cls, "kl_loss": kl,
            "lambda_c": logits.new_tensor(lam_c), "lambda_s": logits.new_tensor(lam_s)}


def modality_loss(modality_logits: torch.Tensor, labels: torch.Tensor,
                  present: torch.Tensor | None = None) -> torch.Tensor:
    """Deep supervision per sequence: softmax cross-entropy of each present sequence's own
    logits against its case's label, averaged over the present (case, sequence) pairs;
    ``modality_logits`` (B, M, K), ``labels`` (B,), ``present`` (B, M) bool (None: all).

    Example:
        >>> z = torch.zeros(2, 3, 4)
        >>> round(float(modality_loss(z, torch.tensor([0, 1]))), 4)   # log 4
        1.3863
    """
    B, M, K = modality_logits.shape
    if present is None:
        present = torch.ones(B, M, dtype=torch.bool, device=modality_logits.device)
    y = labels[:, None].expand(B, M)                                       # (B, M)
    return F.cross_entropy(modality_logits[present].float(), y[present])


class MedMAPLoss(torch.nn.Module):
    """The fine-tuning objective as a module: ``loss(**model(...), labels=y, epoch=e)``.

    ``ramp_epochs`` is ``t_max`` of the lambda ramps, ``temperature`` the KL term's; the other
    keywords are :func:`medmap_loss`'s (``class_weights`` (K,) is kept as a buffer). Takes the
    keys of :meth:`~medmap.models.medmap.MedMAPClassifier.forward` (``probs`` is the inference
    output and plays no part here) and returns :func:`medmap_loss`'s named terms.
    """

    def __init__(self, ramp_epochs: int | float, temperature: float = 0.1, *,
                 cls_loss: str = "bce", weighting: str = "ramp", cls_weight: float = 0.1,
                 kl_weight: float = 0.1, label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None, modality_weight: float = 0.0):
        super().__init__()
        self.ramp_epochs, self.temperature = ramp_epochs, temperature
        self.modality_weight = float(modality_weight)
        self.options = dict(cls_loss=cls_loss, weighting=weighting, cls_weight=cls_weight,
                            kl_weight=kl_weight, label_smoothing=label_smoothing)
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, fusion: torch.Tensor, labels: torch.Tensor,
                epoch: int | float, text_features: torch.Tensor | None = None,
                probs: torch.Tensor | None = None, modality_logits: torch.Tensor | None = None,
                present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        terms = medmap_loss(logits, labels, fusion, text_features, epoch, self.ramp_epochs,
                            self.temperature, class_weights=self.class_weights, **self.options)
        if modality_logits is not None and self.modality_weight > 0:
            terms["modality_loss"] = modality_loss(modality_logits, labels, present)
            terms["loss"] = terms["loss"] + self.modality_weight * terms["modality_loss"]
        return terms
