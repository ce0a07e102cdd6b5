"""3D Grad-CAM per modality for :class:`~medmap.models.medmap.MedMAPClassifier`, and lesion
localisation metrics of the maps.

The target layer of modality ``m`` is the output of its expert's ``feature_map`` (the Swin /
ResNet / CNN feature map ``(B, C, d, h, w)`` that the expert's tokens are read from). Every
modality's feature map is routed through its own identity "tap" layer, and MONAI's
``ModelWithHooks`` records the taps' activations and gradients in one forward and one backward
pass (one pass per modality cost M times as much). Maps are upsampled (trilinear) to the input
size and min-max normalised to ``[0, 1]`` per case (a map that is constant, e.g. all zero after
the ReLU, becomes all zero).

Localisation (where a lesion mask exists):

* pointing game: 1 when the CAM's maximum lies inside the mask (0 for a constant CAM); the
  maximum of an upsampled coarse map is a plateau, and its central voxel is the point;
* CAM AUC: ROC AUC of the CAM values separating lesion from non-lesion voxels.

Example:
    >>> import torch
    >>> from medmap.models.medmap import MedMAPConfig, MedMAPClassifier
    >>> model = MedMAPClassifier(MedMAPConfig.tiny(["T2WI", "C+A"], ["a", "b"])).eval()
    >>> cams = gradcam(model, torch.randn(2, 2, 1, 32, 32, 32), torch.ones(2, 2, dtype=torch.bool))
    >>> tuple(cams["T2WI"].shape)
    (2, 32, 32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["gradcam", "pointing_game", "cam_auc", "localisation", "aggregate_localisation",
           "normalise_cam"]


class _Tap(nn.Module):
    """Identity layer whose output (the expert feature map) MONAI's hooks record."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:          # frozen experts: still give Grad-CAM a gradient
            x = x.detach().requires_grad_(True)
        return x * 1.0                   # a new node, so the full backward hook sees its grad


class _TappedModel(nn.Module):
    """``forward(images, present, lesion_mask=None) -> logits`` with the expert feature map of
    every modality in ``names`` routed through its own identity tap ``taps[name]``, so one
    forward and one backward pass give every modality's activations and gradients."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.taps = nn.ModuleDict({n: _Tap() for n in names})

    def forward(self, images: torch.Tensor, present: torch.Tensor,
                lesion_mask: torch.Tensor | None = None) -> torch.Tensor:
        experts = self.model.experts
        encode = type(experts).encode
        taps = self.taps

        def tapped_encode(x_m: torch.Tensor, modality: str, **kw):
            if modality not in taps:
                return encode(experts, x_m, modality, **kw)
            tap = taps[modality]
            enc = experts.encoders[experts.key(modality)]
            feature_map, feature_maps = type(enc).feature_map, type(enc).feature_maps
            enc.feature_map = lambda v: tap(feature_map(enc, v))
            enc.feature_maps = lambda v: _tap_last(feature_maps(enc, v), tap)
            try:
                return encode(experts, x_m, modality, **kw)
            finally:
                del enc.feature_map, enc.feature_maps

        experts.encode = tapped_encode
        try:
            kw = {} if lesion_mask is None else {"lesion_mask": lesion_mask}
            return self.model(images, present, **kw)["logits"]
        finally:
            del experts.encode


def _tap_last(maps: list[torch.Tensor], tap: nn.Module) -> list[torch.Tensor]:
    return [*maps[:-1], tap(maps[-1])]


def _hooks_cls():
    from monai.visualize.class_activation_maps import ModelWithHooks

    class _PerSampleHooks(ModelWithHooks):
        """MONAI's hooks with a per-sample class score (MONAI's default indexes every sample
        with every sample's class when ``class_idx`` is a tensor)."""

        def class_score(self, logits: torch.Tensor, class_idx) -> torch.Tensor:
            idx = torch.as_tensor(class_idx, device=logits.device).long().reshape(-1)
            if idx.numel() == 1:
                idx = idx.expand(logits.shape[0])
            return logits.gather(1, idx[:, None])[:, 0]

    return _PerSampleHooks


def normalise_cam(cam: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling of ``(B, ...)`` maps to ``[0, 1]`` (constant maps -> 0)."""
    flat = cam.reshape(cam.shape[0], -1)
    lo = flat.min(1, keepdim=True).values
    rng = flat.max(1, keepdim=True).values - lo
    out = torch.where(rng > 0, (flat - lo) / rng.clamp_min(1e-12), torch.zeros_like(flat))
    return out.reshape(cam.shape)


def _class_indices(class_index, B: int) -> torch.Tensor | None:
    if class_index is None:
        return None
    idx = torch.as_tensor(class_index).long().reshape(-1)
    if idx.numel() == 1:
        return idx.expand(B).clone()
    if idx.numel() != B:
        raise ValueError(f"class_index must be an int or hold one index per case ({B}), "
                         f"got {idx.numel()}")
    return idx


def gradcam(model: nn.Module, images: torch.Tensor, present: torch.Tensor,
            class_index: int | Sequence[int] | torch.Tensor | None = None,
            modalities: Sequence[str] | None = None,
            lesion_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Grad-CAM of every modality's expert feature map, all modalities from one forward and
    one backward pass (MONAI's hooks record each expert's tap).

    Args:
        model: a :class:`MedMAPClassifier` (put in eval mode for the call, restored after).
        images: (B, M, 1, D, H, W); present: (B, M) bool.
        class_index: the class explained: None = each case's predicted class; an int for every
            case, or one index per case.
        modalities: restrict to these modalities (default: all of the model's).
        lesion_mask: (B, 1, D, H, W), for models that read the lesion mask.

    Returns ``{modality: (B, D, H, W) float32 CPU tensor in [0, 1]}`` for every modality present
    in at least one case; rows of cases without the modality are all zero. The map is
    ``relu(sum_c mean(dy/dA_c) * A_c)`` (Grad-CAM), upsampled (trilinear) to the input size and
    min-max normalised per case.
    """
    import torch.nn.functional as F

    cfg = model.cfg
    B, M = present.shape
    if images.ndim != 6 or images.shape[:2] != present.shape:
        raise ValueError(f"images must be (B, M, 1, D, H, W) matching present "
                         f"{tuple(present.shape)}, got {tuple(images.shape)}")
    wanted = list(cfg.modalities) if modalities is None else list(modalities)
    unknown = [m for m in wanted if m not in cfg.modalities]
    if unknown:
        raise ValueError(f"gradcam: modalities {unknown} are not the model's {cfg.modalities}")
    device = next(model.parameters()).device
    images, present = images.to(device), present.to(device).bool()
    names = [n for n in wanted if bool(present[:, cfg.modalities.index(n)].any())]
    kw = {} if lesion_mask is None else {"lesion_mask": lesion_mask.to(device)}
    was_training = model.training
    model.eval()
    out: dict[str, torch.Tensor] = {}
    # only the gradient at each tap is needed: with the weights frozen for the call, backward
    # stops at the taps and computes no weight gradient (about half of its work)
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.enable_grad():
            idx = _class_indices(class_index, B)
            if idx is None:
                with torch.no_grad():
                    idx = model(images, present, **kw)["logits"].argmax(1)
            if not names:
                return out
            net = _TappedModel(model, names)
            hooked = _hooks_cls()(net, [f"taps.{n}" for n in names], register_forward=True,
                                  register_backward=True)
            _, actis, grads = hooked(images, class_idx=idx.to(device), present=present, **kw)
            spatial = tuple(images.shape[3:])
            for name, acti, grad in zip(names, actis, grads):
                rows = present[:, cfg.modalities.index(name)].nonzero(as_tuple=True)[0]
                weights = grad.float().flatten(2).mean(2)[..., None, None, None]  # (b, C, 1...)
                cam = F.relu((weights * acti.float()).sum(1, keepdim=True))      # (b, 1, d, h, w)
                cam = F.interpolate(cam, size=spatial, mode="trilinear", align_corners=False)
                full = torch.zeros((B, *spatial), dtype=torch.float32)
                full[rows.cpu()] = normalise_cam(cam[:, 0]).detach().float().cpu()
                out[name] = full
            net.zero_grad(set_to_none=True)
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return out


# ---- localisation ---------------------------------------------------------------------------
def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def pointing_game(cam, mask, rel_tol: float = 1e-4) -> float | None:
    """1.0 when the CAM's maximum points inside ``mask`` (> 0), else 0.0; None for an empty
    mask. A constant CAM points nowhere (0.0).

    An upsampled coarse CAM has a *plateau* maximum (every voxel within ``rel_tol`` of the
    range below the maximum, e.g. a whole 8^3 block when a 2^3 map is upsampled to 32^3); the
    point is the plateau voxel nearest the plateau's centroid, not its first voxel (which would
    always sit at the block's corner, often the volume's corner).
    """
    c, m = _np(cam), _np(mask) > 0
    if c.size != m.size:
        raise ValueError(f"cam and mask sizes differ: {c.shape} vs {m.shape}")
    m = m.reshape(c.shape)
    if not m.any():
        return None
    hi, lo = float(c.max()), float(c.min())
    if hi == lo:
        return 0.0
    plateau = np.argwhere(c >= hi - rel_tol * (hi - lo))        # (K, ndim) voxel indices
    centre = plateau.mean(axis=0)
    point = plateau[int(np.argmin(((plateau - centre) ** 2).sum(axis=1)))]
    return float(m[tuple(point)])


def cam_auc(cam, mask) -> float | None:
    """ROC AUC of the CAM values for lesion (mask > 0) vs non-lesion voxels; None when the mask
    is empty or covers everything."""
    from medmap.metrics import _binary_auc_ranks

    c, m = _np(cam).reshape(-1).astype(np.float64), _np(mask).reshape(-1) > 0
    if c.shape != m.shape:
        raise ValueError(f"cam and mask sizes differ: {_np(cam).shape} vs {_np(mask).shape}")
    if not m.any() or m.all():
        return None
    return _binary_auc_ranks(m, c)


def localisation(cam, mask) -> dict[str, float | None]:
    """``{"pointing_hit", "cam_auc", "lesion_fraction"}`` of one case's CAM (D, H, W) against
    its mask. ``lesion_fraction`` (the mask's share of the voxels, None for an empty mask) is the
    pointing game's chance level: the hit rate of a uniformly random point."""
    m = _np(mask) > 0                      # converted once, shared by the three scores
    return {"pointing_hit": pointing_game(cam, m), "cam_auc": cam_auc(cam, m),
            "lesion_fraction": float(m.mean()) if m.any() else None}


def aggregate_localisation(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-case records ``{"case_id", "modality", "pointing_hit", "cam_auc"}`` (and
    optionally ``"lesion_fraction"``).

    Returns ``{"per_modality": {modality: {"n", "pointing_game", "cam_auc",
    "pointing_chance"}}, "overall": {...}}`` with means over the cases where each value is
    defined (None when none is); ``pointing_chance`` is the mean lesion fraction, the pointing
    game of a random point.
    """
    def mean(rs: Sequence[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    def summary(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"n": len(rs), "pointing_game": mean(rs, "pointing_hit"),
                "cam_auc": mean(rs, "cam_auc"), "pointing_chance": mean(rs, "lesion_fraction")}

    by_mod: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_mod.setdefault(r["modality"], []).append(r)
    return {"per_modality": {k: summary(v) for k, v in by_mod.items()},
            "overall": summary(records)}
