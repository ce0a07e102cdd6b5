"""Shared pieces of the MedMoM-Sim generators: the realism knobs, MR artefacts and the small
geometry / random-field helpers both organs use.

Every organ generator returns a :class:`SimCase` (clean-ish signal per modality, lesion mask,
label, per-modality reports); :func:`apply_artefacts` then adds partial-volume blur, a smooth
bias field, Rician noise and inter-phase misregistration, all drawn from one seeded
``numpy.random.Generator`` so a case is a pure function of (seed, index, settings).

The helpers below them (smooth random fields, :func:`coarse_field`, :func:`soft_step`,
:func:`box_slices`, :func:`ellipsoid`, :func:`pick`) are shared by ``liver`` and ``brain``; where
the two organs used to differ in a detail that changes floating-point results, the helper
takes a parameter, so each organ's seeded output stays bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy import ndimage


@dataclass
class SimConfig:
    """Realism knobs of the simulator (defaults are the benchmark's settings)."""

    size: int = 64                      # cubic volume side, voxels
    noise: float = 0.04                 # Rician noise sigma, as a fraction of tissue signal ~1
    bias_field: float = 0.15            # peak relative amplitude of the smooth multiplicative bias
    blur_sigma: float = 0.6             # partial-volume Gaussian blur, voxels
    lesion_radius_mm: tuple[float, float] = (8.0, 22.0)   # lesion radius range, mm
    # liver: range of the per-case conspicuity exponent on every lesion / liver contrast
    # (1 = the class's textbook contrast, lower = fainter); None = liver.CONSPICUITY (0.38, 1.2)
    liver_conspicuity: tuple[float, float] | None = None
    misregistration_mm: float = 3.0     # max rigid shift of a phase relative to the first, mm
    p_missing: float = 0.1              # probability that any one non-reference phase is absent
    fov_mm: float = 240.0               # field of view (liver); brain uses the MNI box
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train / val / test

    @property
    def spacing_mm(self) -> float:
        return self.fov_mm / self.size


@dataclass
class SimCase:
    """One simulated study before it is written to disk."""

    label: str
    volumes: dict[str, np.ndarray]      # modality -> (S, S, S) float32, RAS voxel order
    mask: np.ndarray                    # (S, S, S) uint8 lesion mask in the reference grid
    reports: dict[str, str]             # modality -> report; optional "global"
    spacing: tuple[float, float, float]  # voxel size, mm
    meta: dict = field(default_factory=dict)  # generator facts (lesion count, sizes, ...)
    organ_mask: np.ndarray | None = None  # (S, S, S) uint8 organ mask (liver incl. lesions)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field smoothed with ``sigma`` voxels."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-8)


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """A smooth multiplicative field in ``[1 - amplitude, 1 + amplitude]`` (low-order polynomial)."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    field_ = np.zeros(shape, np.float32)
    for g in grids:
        field_ += rng.uniform(-1, 1) * g + rng.uniform(-0.5, 0.5) * g * g
    field_ /= np.abs(field_).max() + 1e-8
    return 1.0 + amplitude * field_


def rician(rng: np.random.Generator, x: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise: MR's Rician noise."""
    re = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(x.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im)


def shift(x: np.ndarray, offset_vox: np.ndarray, order: int = 1) -> np.ndarray:
    """Rigidly translate a volume by a sub-voxel offset (edge values repeat)."""
    return ndimage.shift(x, offset_vox, order=order, mode="nearest")


def apply_artefacts(
    rng: np.random.Generator,
    volumes: dict[str, np.ndarray],
    cfg: SimConfig,
    spacing_mm: float,
    reference: str,
) -> dict[str, np.ndarray]:
    """Blur, bias field, Rician noise and misregistration (not for ``reference``) per phase.

    The bias field is shared by all phases of a study (same coil) with a small per-phase
    perturbation, as in a real multi-phase exam.
    """
    shape = next(iter(volumes.values())).shape
    shared_bias = bias_field(rng, shape, cfg.bias_field)
    out: dict[str, np.ndarray] = {}
    for name, v in volumes.items():
        x = ndimage.gaussian_filter(v, cfg.blur_sigma) if cfg.blur_sigma > 0 else v
        x = x * shared_bias * bias_field(rng, shape, cfg.bias_field * 0.25)
        if name != reference and cfg.misregistration_mm > 0:
            off = rng.uniform(-1, 1, 3) * cfg.misregistration_mm / spacing_mm
            x = shift(x, off)
        x = rician(rng, x.astype(np.float32), cfg.noise)
        out[name] = x.astype(np.float32)
    return out


@lru_cache(maxsize=16)
def upsampler(n: int, size: int, kind: Literal["linear", "gaussian"]) -> np.ndarray:
    """(size, n) weights that interpolate an n-node coarse lattice to ``size`` points (read-only).

    ``"linear"``: linear interpolation between cell-centred grids (liver). ``"gaussian"``:
    normalised Gaussian weights (sigma 0.75 lattice steps) on end-aligned grids (brain).
    """
    if kind == "linear":
        pos = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        i0 = np.minimum(np.floor(pos).astype(int), n - 2) if n > 1 else np.zeros(size, int)
        w = (pos - i0).astype(np.float32)
        a = np.zeros((size, n), np.float32)
        a[np.arange(size), i0] = 1 - w
        if n > 1:
            a[np.arange(size), i0 + 1] += w
    elif kind == "gaussian":
        pos = np.linspace(0, n - 1, size)
        g = np.exp(-((pos[:, None] - np.arange(n)[None, :]) ** 2) / (2 * 0.75 ** 2))
        a = (g / g.sum(1, keepdims=True)).astype(np.float32)
    else:
        raise ValueError(f"unknown upsampler {kind!r}; use 'linear' or 'gaussian'")
    a.setflags(write=False)
    return a


def coarse_field(
    rng: np.random.Generator,
    size: int,
    n: int,
    sigma: float,
    kind: Literal["linear", "gaussian"],
    *,
    last_axis_second: bool = False,
    standardise: bool = False,
) -> np.ndarray:
    """A very smooth random field on the ``size``^3 cube: :func:`smooth_noise` (``sigma``
    lattice steps) on an n^3 lattice, upsampled separably with three small matrix products
    (much faster than a wide full-size Gaussian filter). float32, shape (S, S, S).

    The upsampling weights are :func:`upsampler` ``(n, size, kind)``. Axes are contracted in
    the order 0, 1, 2, or 0, 2, 1 with ``last_axis_second`` (the same field up to float
    rounding; each organ keeps its own order so its seeded outputs stay bit-identical).
    ``standardise`` rescales the upsampled field to zero mean and unit std (the lattice field
    already is; upsampling shrinks its std a little).
    """
    c = smooth_noise(rng, (n, n, n), sigma)
    m = upsampler(n, size, kind)
    f = np.tensordot(m, c, axes=(1, 0))              # (S, n, n)
    if last_axis_second:
        f = np.tensordot(f, m, axes=(2, 1))          # (S, n, S)
        f = np.matmul(m, f)                          # (S, S, S), batched over axis 0
    else:
        f = np.matmul(m, f)                          # (S, S, n), batched over axis 0
        f = f @ m.T                                  # (S, S, S)
    if standardise:
        f = (f - f.mean()) / (f.std() + 1e-8)
    return f.astype(np.float32)


def soft_step(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for x << 0, 1 for x >> 0, linear over ``width`` (a partial-volume edge)."""
    return np.clip(x / width + 0.5, 0.0, 1.0)


def box_slices(
    center: np.ndarray, half: np.ndarray | float, size: int
) -> tuple[slice, slice, slice]:
    """Slices of the axis-aligned box ``center +- half`` (voxels), clipped to a ``size``^3 cube."""
    lo = np.maximum(np.floor(center - half).astype(int), 0)
    hi = np.minimum(np.ceil(center + half).astype(int) + 1, size)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def ellipsoid(
    shape: tuple[int, int, int], center: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Normalised ellipsoidal distance field: < 1 inside the ellipsoid (axis-aligned radii)."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return np.sqrt(
        ((zz - center[0]) / radii[0]) ** 2
        + ((yy - center[1]) / radii[1]) ** 2
        + ((xx - center[2]) / radii[2]) ** 2
    ).astype(np.float32)


def pick(rng: np.random.Generator, options: list[str]) -> str:
    """One of ``options`` (for varied report wording)."""
    return options[int(rng.integers(len(options)))]
