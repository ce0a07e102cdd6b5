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


def ramp_weights(epoch: int | float, max_epochs: int | float) -> tuple[float, float]:
    """(lambda_c, lambda_s) at ``epoch`` of ``max_epochs`` (paper's ramp-up / ramp-down)."""
    if max_epochs <= 0:
        raise ConfigError(f"max_epochs must be > 0, got {max_epochs}")
    r = min(max(epoch / max_epochs, 0.0), 1.0)
    return 0.1 * math.exp(-5.0 * (1.0 - r)), 0.1 * math.exp(-5.0 * r)


def kl_alignment(f_t: torch.Tensor, f_fusion: torch.Tensor,
                 temperature: float = 0.1) -> torch.Tensor:
    """KL(softmax(n(f_t) / tau) || softmax(n(f_fusion) / tau)) averaged over the batch, with
    ``n`` the L2 normalisation; both (B, d)."""
    if temperature <= 0:
        raise ConfigError(f"kl temperature must be > 0, got {temperature}")
    p = F.log_softmax(F.normalize(f_t, dim=-1) / temperature, -1)
    q = F.log_softmax(F.normalize(f_fusion, dim=-1) / temperature, -1)
    return F.kl_div(q, p, log_target=True, reduction="batchmean")


def medmap_loss(logits: torch.Tensor, labels: torch.Tensor, fusion: torch.Tensor,
                text_features: torch.Tensor | None, epoch: int | float,
                max_epochs: int | float, temperature: float = 0.1) -> dict[str, torch.Tensor]:
    """Named loss terms: ``cls_loss`` (BCE on sigmoid probabilities vs one-hot labels),
    ``kl_loss``, their ramp weights and the weighted total ``loss``."""
    lam_c, lam_s = ramp_weights(epoch, max_epochs)
    onehot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)          # (B, K)
    cls = F.binary_cross_entropy_with_logits(logits, onehot)
    kl = (kl_alignment(text_features, fusion, temperature) if text_features is not None
          else logits.new_zeros(()))
    return {"loss": lam_c * cls + lam_s * kl, "cls_loss": cls, "kl_loss": kl,
            "lambda_c": logits.new_tensor(lam_c), "lambda_s": logits.new_tensor(lam_s)}


class MedMAPLoss(torch.nn.Module):
    """The fine-tuning objective as a module: ``loss(**model(...), labels=y, epoch=e)``.

    ``ramp_epochs`` is ``t_max`` of the lambda ramps, ``temperature`` the KL term's. Takes the
    keys of :meth:`~medmap.models.medmap.MedMAPClassifier.forward` (``probs`` is the inference
    output and plays no part here) and returns :func:`medmap_loss`'s named terms.
    """

    def __init__(self, ramp_epochs: int | float, temperature: float = 0.1):
        super().__init__()
        self.ramp_epochs, self.temperature = ramp_epochs, temperature

    def forward(self, logits: torch.Tensor, fusion: torch.Tensor, labels: torch.Tensor,
                epoch: int | float, text_features: torch.Tensor | None = None,
                probs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return medmap_loss(logits, labels, fusion, text_features, epoch, self.ramp_epochs,
                           self.temperature)
