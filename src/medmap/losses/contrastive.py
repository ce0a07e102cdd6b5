"""Symmetric InfoNCE (CLIP loss) computed within each MRI modality, gathered across ranks.

For modality ``m`` with paired volume / report features ``v, t`` (both L2-normalised, ``n_m``
pairs) and temperature ``tau``: ``logits = v @ t.T / tau``;
``L_v2t = CE(logits, arange)``, ``L_t2v = CE(logits.T, arange)``, ``L^m = (L_v2t + L_t2v) / 2``.
The returned ``contrastive_loss`` is the mean of ``L^m`` over the modalities with >= 2 pairs in
the (global) batch.

Under ``torch.distributed`` the features of all ranks are gathered *with gradients* and every
rank computes the loss of the whole global batch, so a 2-process run computes the same loss (and,
after DDP's gradient averaging, the same gradient) as one process on the same global batch.

Example:
    >>> import torch, torch.nn.functional as F
    >>> v, t = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    >>> out = modality_contrastive_loss(v, t, torch.tensor([0, 0, 1, 1]), torch.tensor(10.0))
    >>> sorted(out)
    ['contrastive_loss', 'per_modality', 'v2t_correct']
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 in rank order, keeping the autograd graph
    (no-op alone). Ranks may hold different numbers of rows (a modality-grouped sampler's last
    batch of a group, an uneven validation shard): each pads to the largest, and the padding
    is cut out of the result. The backward pass sums each row's gradients over the ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    # torch's successor of the deprecated torch.distributed.nn.functional.all_gather
    from torch.distributed import _functional_collectives as fc

    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)                                   # rows per rank (no gradient)
    sizes = torch.cat(sizes).tolist()                           # one device-to-host copy
    most = max(sizes)
    if x.shape[0] < most:
        x = torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    out = fc.all_gather_single_autograd(x.contiguous(), gather_dim=0,
                                        group=dist.group.WORLD)  # (world * most, ...)
    if all(s == most for s in sizes):
        return out
    return torch.cat([out[r * most: r * most + s] for r, s in enumerate(sizes)])


def clip_loss(v: torch.Tensor, t: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows ``v[i] <-> t[i]``; ``logit_scale`` = 1 / temperature."""
    logits = logit_scale * v @ t.t()                    # (n, n)
    target = torch.arange(v.shape[0], device=v.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def modality_contrastive_loss(
    v: torch.Tensor,
    t: torch.Tensor,
    modality: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: bool = True,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | dict[int, torch.Tensor]]:
    """Per-modality symmetric InfoNCE on (possibly gathered) features.

    Args:
        v: (B, E) normalised volume embeddings. t: (B, E) normalised report embeddings.
        modality: (B,) modality index of each pair. logit_scale: scalar, 1 / temperature.
        mask: (B,) bool, the rows that are real pairs (case batches pad every case to all
            modalities so that ranks gather same-size tensors); None: every row.
    Returns ``contrastive_loss`` (scalar), ``per_modality`` {index: loss} and ``v2t_correct``
    (number of pairs whose top-1 report within their modality is their own).
    """
    if gather:
        v, t, modality = gather_with_grad(v), gather_with_grad(t), gather_with_grad(modality)
        mask = None if mask is None else gather_with_grad(mask)
    if mask is not None:
        v, t, modality = v[mask], t[mask], modality[mask]
    losses: dict[int, torch.Tensor] = {}
    correct = v.new_zeros(())
    for m in torch.unique(modality).tolist():
        idx = (modality == m).nonzero(as_tuple=True)[0]
        if idx.numel() < 2:
            continue
        vm, tm = v[idx], t[idx]                          # (n_m, E)
        losses[int(m)] = clip_loss(vm, tm, logit_scale)
        with torch.no_grad():
            correct = correct + ((vm @ tm.t()).argmax(1) == torch.arange(len(idx), device=v.device)).sum()
    total = torch.stack(list(losses.values())).mean() if losses else (v.sum() + t.sum()) * 0.0
    return {"contrastive_loss": total, "per_modality": losses, "v2t_correct": correct}


class ModalityContrastiveLoss(torch.nn.Module):
    """MedMAP's pre-training objective as a module: ``loss(**model(...))``.

    Takes the keys of :meth:`~medmap.models.medmap.ModalityAwareCLIP.forward`: the per-modality
    symmetric InfoNCE of :func:`modality_contrastive_loss` and, for case batches with
    ``case_weight > 0``, ``case_loss``: symmetric InfoNCE between the case embeddings and their
    global impressions (cases without one left out). Returns those terms and ``loss``, the
    total ``contrastive_loss + case_weight * case_loss``.
    """

    def __init__(self, case_weight: float = 0.0, gather: bool = True):
        super().__init__()
        self.case_weight, self.gather = case_weight, gather

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                modality: torch.Tensor, logit_scale: torch.Tensor,
                pair_mask: torch.Tensor | None = None,
                case_features: torch.Tensor | None = None,
                global_features: torch.Tensor | None = None,
                global_mask: torch.Tensor | None = None) -> dict:
        out = modality_contrastive_loss(image_features, text_features, modality, logit_scale,
                                        gather=self.gather, mask=pair_mask)
        out["loss"] = out["contrastive_loss"]
        if self.case_weight > 0 and case_features is not None and global_features is not None:
            keep = global_mask.bool() if global_mask is not None else \
                torch.ones(len(case_features), dtype=torch.bool, device=case_features.device)
            v, t = case_features, global_features
            if self.gather:      # same-size tensors on every rank, masked after the gather
                v, t, keep = gather_with_grad(v), gather_with_grad(t), gather_with_grad(keep)
            v, t = v[keep], t[keep]
            case = clip_loss(v, t, logit_scale) if len(v) >= 2 else (v.sum() + t.sum()) * 0.0
            out["case_loss"] = case
            out["loss"] = out["loss"] + self.case_weight * case
        return out
