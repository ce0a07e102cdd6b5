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

from medmap.config import UserError

__all__ = ["REGIONS", "SHAPE_STATS", "LesionGeometry", "lesion_regions", "region_pool",
           "region_stats", "region_stats_per_channel", "shape_stats", "token_weights"]

REGIONS = ("lesion", "core", "rim", "shell")
# what :func:`shape_stats` returns per case, in order
SHAPE_STATS = ("log_lesion_fraction", "log_core_fraction", "log_rim_fraction",
               "log_shell_fraction", "extent_d", "extent_h", "extent_w", "box_fill")


def _dilate(m: torch.Tensor, k: int) -> torch.Tensor:
    """Binary dilation of (b, 1, D, H, W) by a (2k+1)^3 cube, zeros outside the volume: a
    running maximum over 2k+1 voxels along each axis in turn (a zero-padded ``unfold`` and
    ``amax``; the same values as ``F.max_pool3d`` with a 1D kernel per axis, about 4x faster
    on a CPU, where max pooling also computes the indices of its maxima)."""
    if k <= 0:
        return m
    for dim in (2, 3, 4):
        pad = [0, 0] * (4 - dim) + [k, k]             # F.pad lists the last axis first
        m = F.pad(m, pad).unfold(dim, 2 * k + 1, 1).amax(-1)
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


def region_weights(regions: torch.Tensor, grid: tuple[int, ...], dtype: torch.dtype
                   ) -> torch.Tensor:
    """Each region's share of every cell of a ``grid`` feature map: (b, R, n)."""
    return F.adaptive_avg_pool3d(regions.to(dtype), tuple(grid)).flatten(2)


def region_pool(fmap: torch.Tensor, regions: torch.Tensor | None = None, *,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of every channel of ``fmap`` (b, C, d, h, w) inside every region of
    ``regions`` (b, R, D, H, W), each cell weighted by the region's share of it: (b, R, C).
    ``weights``: those shares precomputed (:meth:`LesionGeometry.region_weights`)."""
    w = (weights if weights is not None
         else region_weights(regions, fmap.shape[2:], fmap.dtype))              # (b, R, n)
    pooled = torch.bmm(w, fmap.flatten(2).transpose(1, 2))                         # (b, R, C)
    return pooled / w.sum(-1, keepdim=True).clamp_min(1e-6)


def region_stats(image: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """The mean and standard deviation of ``image`` (b, 1, D, H, W) inside every region of
    ``regions`` (b, R, D, H, W) at the image's resolution: (b, 2R), means first; in fp32
    outside autocast (a variance as E[x^2] - E[x]^2 in bf16 would be noise)."""
    return region_stats_per_channel(image, regions)[:, 0]


def region_stats_per_channel(images: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """:func:`region_stats` of every channel of ``images`` (b, C, D, H, W), e.g. every
    sequence of a case, against the case's one set of ``regions``: (b, C, 2R)."""
    with torch.autocast(images.device.type, enabled=False):
        return _region_stats(images.float(), regions.float())


def _region_stats(images: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    w = regions.flatten(2)                                                          # (b, R, n)
    v = images.flatten(2).transpose(1, 2)                                           # (b, n, C)
    n = w.sum(-1, keepdim=True).clamp_min(1e-6)                                     # (b, R, 1)
    mean = torch.bmm(w, v) / n                                                      # (b, R, C)
    sq = torch.bmm(w, v * v) / n
    sd = (sq - mean * mean).clamp_min(0).sqrt()
    return torch.cat([mean, sd], dim=1).transpose(1, 2)                             # (b, C, 2R)


def shape_stats(regions: torch.Tensor) -> torch.Tensor:
    """What the lesion mask says about the lesion's size and shape, (b, 4, D, H, W) regions ->
    (b, 8) in the order of :data:`SHAPE_STATS`: the log share of the crop in the lesion, its
    core, its rim and the shell around it (with a fixed margin in mm around the lesion's box,
    the lesion's share of the crop grows with its size; rim against core is its compactness),
    the lesion box's share of each axis, and the share of that box the lesion fills (low for
    several lesions or an irregular one). fp32, no gradient (the mask is an input).

    Example:
        >>> m = torch.zeros(1, 1, 8, 8, 8); m[:, :, 2:6, 2:6, 2:4] = 1
        >>> [round(v, 3) for v in shape_stats(lesion_regions(m, rim=1, shell=1))[0, 4:].tolist()]
        [0.5, 0.5, 0.25, 1.0]
    """
    r = regions.detach().float()
    frac = r.flatten(2).mean(-1).clamp_min(1e-4).log()                              # (b, 4)
    lesion = r[:, 0] > 0.5                                                          # (b, D, H, W)
    extents = []
    for axis in (1, 2, 3):                                   # D, H, W: the lesion's span per axis
        others = tuple(a for a in (1, 2, 3) if a != axis)
        on = lesion.any(dim=others).float()                                        # (b, n_axis)
        idx = torch.arange(on.shape[1], dtype=torch.float32, device=on.device)
        first = torch.where(on > 0, idx, torch.full_like(idx, float("inf"))).amin(-1)
        last = torch.where(on > 0, idx, torch.full_like(idx, -1.0)).amax(-1)
        extents.append(((last - first + 1) / on.shape[1]).clamp_min(0.0).nan_to_num(0.0))
    ext = torch.stack(extents, dim=-1)                                               # (b, 3)
    box = ext.prod(-1) * lesion[0].numel()
    fill = lesion.flatten(1).float().sum(-1) / box.clamp_min(1.0)                    # (b,)
    return torch.cat([frac, ext, fill[:, None]], dim=-1)


def token_weights(mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """The fraction of each token's cell inside ``mask`` (b, 1, D, H, W): (b, N), for a token
    grid that divides every axis by the same stride (every medmap encoder's)."""
    D, H, W = mask.shape[-3:]
    stride = round((D * H * W / n_tokens) ** (1 / 3))
    grid = (max(1, D // stride), max(1, H // stride), max(1, W // stride))
    if grid[0] * grid[1] * grid[2] != n_tokens:
        raise UserError(f"mask pooling: {n_tokens} tokens do not tile a {D}x{H}x{W} volume "
                        "evenly; use pooling 'mean_max' with this encoder")
    return F.adaptive_avg_pool3d(mask.float(), grid).flatten(1)          # (b, N)


class LesionGeometry:
    """A batch's lesion mask and what mask and region pooling derive from it, each computed
    once for the whole batch and shared by every modality: all sequences of a case share one
    mask, so the regions, a token grid's weights and a feature-map grid's region weights are
    the same for each of them (computed per modality they cost ~8% of the demo's fine-tuning
    step). :meth:`rows` gives one modality's rows (the cases where it is present).

    Example:
        >>> m = torch.zeros(2, 1, 32, 32, 32); m[:, :, 8:24, 8:24, 8:24] = 1
        >>> g = LesionGeometry(m)
        >>> tuple(g.region_weights((16, 16, 16), torch.float32).shape)
        (2, 4, 4096)
        >>> tuple(g.rows(torch.tensor([1])).token_weights(64).shape)
        (1, 64)
    """

    def __init__(self, mask: torch.Tensor, *, _rows: torch.Tensor | None = None,
                 _shared: dict | None = None):
        self._full_mask = mask                                           # (B, 1, D, H, W)
        self._rows = _rows                                               # None: every row
        self._shared: dict = {} if _shared is None else _shared

    def rows(self, rows: torch.Tensor) -> LesionGeometry:
        """The geometry of batch rows ``rows`` (indices); computed parts stay shared."""
        if rows.numel() == self._full_mask.shape[0] and bool(
                (rows == torch.arange(rows.numel(), device=rows.device)).all()):
            rows = None                                   # every row: no copies
        return LesionGeometry(self._full_mask, _rows=rows, _shared=self._shared)

    def _full(self, key: tuple, compute) -> torch.Tensor:
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def _get(self, key: tuple, compute) -> torch.Tensor:
        value = self._full(key, compute)
        return value if self._rows is None else value[self._rows]

    def _regions_full(self) -> torch.Tensor:
        return self._full(("regions",), lambda: lesion_regions(self._full_mask))

    @property
    def mask(self) -> torch.Tensor:
        """(b, 1, D, H, W): the rows' lesion mask."""
        return self._get(("mask",), lambda: self._full_mask)

    @property
    def regions(self) -> torch.Tensor:
        """(b, 4, D, H, W): the rows' :func:`lesion_regions`."""
        return self._get(("regions",), self._regions_full)

    @property
    def shape_features(self) -> torch.Tensor:
        """(b, 8): the rows' :func:`shape_stats`."""
        return self._get(("shape",), lambda: shape_stats(self._regions_full()))

    def token_weights(self, n_tokens: int) -> torch.Tensor:
        """(b, N): :func:`token_weights` of an ``n_tokens`` grid."""
        return self._get(("tokens", n_tokens), lambda: token_weights(self._full_mask, n_tokens))

    def region_weights(self, grid: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """(b, 4, n): :func:`region_weights` of a ``grid`` feature map in ``dtype``."""
        return self._get(("region_weights", tuple(grid), dtype),
                         lambda: region_weights(self._regions_full(), grid, dtype))
