"""Mask-guided region pooling of multi-scale feature maps.

A lesion's diagnosis is written in how its signal compares with the tissue around it, and how
its core differs from its rim (a radiologist's "peripheral nodular enhancement", "rim
enhancement", "central scar"). An expert's last token map is coarse (4^3 for a 32^3 crop), so
pooling it with the lesion mask cannot separate a 2-voxel rim from the core. Region pooling
reads the expert's finer stages too (:meth:`~medmap.models.encoders.Encoder3D.feature_maps`):

1. four regions from the lesion mask (b, 1, D, H, W) at the input's resolution, by max-pool
   morphology (:func:`lesion_regions`): the ``lesion``, its ``core`` (eroded by ``rim``
   voxels), its ``rim`` (lesion minus core) and a ``shell`` of surrounding tissue (dilated by
   ``shell`` voxels, minus the lesion);
2. each region's share of every cell of a feature map's grid (average pooling of the region
   masks onto that grid);
3. the region-weighted mean of every channel (:func:`region_pool`) -> (b, 4, C).

A region that is empty for a case (a lesion too small to erode) falls back to the lesion.

Example:
    >>> import torch
    >>> m = torch.zeros(2, 1, 32, 32, 32); m[:, :, 8:24, 8:24, 8:24] = 1
    >>> regions = lesion_regions(m)
    >>> tuple(region_pool(torch.randn(2, 16, 16, 16, 16), regions).shape)
    (2, 4, 16)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["REGIONS", "lesion_regions", "region_pool"]

REGIONS = ("lesion", "core", "rim", "shell")


def _dilate(m: torch.Tensor, k: int) -> torch.Tensor:
    """Binary dilation of (b, 1, D, H, W) by a (2k+1)^3 cube: three separable 1D max-pools."""
    if k <= 0:
        return m
    n = 2 * k + 1
    for kernel, pad in (((n, 1, 1), (k, 0, 0)), ((1, n, 1), (0, k, 0)), ((1, 1, n), (0, 0, k))):
        m = F.max_pool3d(m, kernel, stride=1, padding=pad)
    return m


def lesion_regions(mask: torch.Tensor, rim: int = 2, shell: int = 3) -> torch.Tensor:
    """(b, 1, D, H, W) mask -> (b, 4, D, H, W) float masks: lesion, core, rim, shell; an empty
    core or rim (a lesion too small to erode) is replaced by the lesion."""
    lesion = (mask > 0.5).float()
    core = 1.0 - _dilate(1.0 - lesion, rim)                   # erosion
    ring = lesion - core
    around = _dilate(lesion, shell) - lesion
    regions = torch.cat([lesion, core, ring, around], dim=1)
    empty = (regions.flatten(2).sum(-1) < 1)[..., None, None, None]   # (b, 4, 1, 1, 1)
    return torch.where(empty, lesion.expand_as(regions), regions)


def region_pool(fmap: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """The mean of every channel of ``fmap`` (b, C, d, h, w) inside every region of
    ``regions`` (b, R, D, H, W), each cell weighted by the region's share of it: (b, R, C)."""
    w = F.adaptive_avg_pool3d(regions.to(fmap.dtype), fmap.shape[2:]).flatten(2)   # (b, R, n)
    pooled = torch.bmm(w, fmap.flatten(2).transpose(1, 2))                         # (b, R, C)
    return pooled / w.sum(-1, keepdim=True).clamp_min(1e-6)
