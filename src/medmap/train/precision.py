"""Which numeric precision a training stage runs in (``OptimConfig.precision: auto``).

``auto`` is ``bf16-mixed`` on a CPU that computes bf16 natively *and correctly*, ``32-true``
elsewhere (a CUDA GPU included: bf16-mixed measured no faster there, docs/benchmarks.md
section 5). "Correctly" is checked, not assumed: on an AMD EPYC with AVX512-BF16 and no AMX,
torch 2.13's oneDNN (v3.12) returned weight gradients of ~1e36 for a bf16 3D convolution on a
2x2x2 feature map (the demo's conv stream ends on one), so the demo's liver fine-tuning reached
NaN in its second epoch there while it trained normally on Intel CPUs with AMX.
:func:`bf16_conv_grad_errors` measures that case against fp32 once per process, map size by
map size. Where only the smallest maps are wrong (that AMD EPYC: 1^3 and 2^3, right from 3^3),
bf16-mixed training runs those few convolutions in fp32 (:mod:`medmap.train.bf16_guard`,
installed by the engine) and the rest in bf16; where larger maps are wrong too, ``auto`` keeps
fp32.

Example:
    >>> resolve_precision("32-true")
    '32-true'
"""

from __future__ import annotations

import functools
import warnings

import torch

# relative error of a bf16 weight gradient against fp32 that still counts as bf16 rounding
# (measured 0.003-0.005 on working kernels; the broken one gave 1.0 to 1e36)
BF16_GRAD_TOLERANCE = 0.05


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (Intel AMX tiles or AVX512-BF16), where bf16
    autocast makes convolutions and matmuls several times faster; elsewhere it is emulated
    and slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:      # noqa: BLE001 - a probe that cannot run means "no"
            pass
    return False


# the feature-map edges (voxels) the probe measures: the demo's encoders end on 2^3 and 4^3 maps
PROBE_EDGES = (1, 2, 3, 4)


@functools.lru_cache(maxsize=1)
def bf16_conv_grad_errors() -> tuple[tuple[int, float], ...]:
    """``((edge, error), ...)`` for each edge of :data:`PROBE_EDGES`: the largest relative
    error, against fp32, of the input and weight gradients of 3D convolutions (3x3x3 at
    stride 1 and 2, 1x1x1 and 2x2x2 at stride 2) on feature maps of ``edge``^3 voxels computed
    under CPU bf16 autocast (about 0.1 s, once per process).
    Working kernels give about 0.004; above :data:`BF16_GRAD_TOLERANCE` the kernels are wrong
    (the AMD EPYC above: wrong on 1^3 and 2^3 maps, right from 3^3)."""
    # the global RNG is left as it was: the probe runs after a stage has seeded and built its
    # model, and dropout and augmentation draw from that RNG later
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(0)
        return tuple((edge, _conv_grad_error(gen, edge)) for edge in PROBE_EDGES)


def bf16_conv_grad_error() -> float:
    """The largest error of :func:`bf16_conv_grad_errors` over every probed map size."""
    return max(err for _, err in bf16_conv_grad_errors())


def bf16_fp32_map_edge() -> int | None:
    """The largest feature-map edge on which this CPU's bf16 convolution gradients are wrong:
    0 where none is; ``None`` where the largest probed edge is wrong too (bf16 unusable).
    Between the two, bf16 training stays correct with the convolutions on maps up to that edge
    in fp32 (:mod:`medmap.train.bf16_guard`)."""
    bad = [edge for edge, err in bf16_conv_grad_errors() if not err <= BF16_GRAD_TOLERANCE]
    if not bad:
        return 0
    return None if max(bad) >= PROBE_EDGES[-1] else max(bad)


def _conv_grad_error(gen: torch.Generator, size: int) -> float:
    worst = 0.0
    # 3x3x3 (padding 1) at stride 1 and 2; 1x1x1 and 2x2x2 at stride 2 (ResNet shortcuts,
    # patch embeddings; measured right on that EPYC at every edge)
    shapes = ((8, 64, 3, 1), (8, 16, 3, 1), (2, 64, 3, 1), (8, 32, 3, 2), (8, 32, 1, 2),
              (8, 32, 2, 2))
    for batch, ch, kernel, stride in shapes:
        pad = 1 if kernel == 3 else 0
        if size + 2 * pad < kernel:
            continue                                   # no output at this size
        for _ in range(2):         # a broken kernel read stale memory: not every call was wrong
            conv = torch.nn.Conv3d(ch, ch, kernel, stride=stride, padding=pad)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.05)
            x = torch.randn(batch, ch, size, size, size, generator=gen, requires_grad=True)
            out = (size + 2 * pad - kernel) // stride + 1
            g = torch.randn(batch, ch, out, out, out, generator=gen)
            grads = []
            for bf16 in (False, True):
                conv.zero_grad()
                x.grad = None
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    y = conv(x)
                (y.float() * g).sum().backward()
                grads.append((conv.weight.grad.clone(), x.grad.clone()))
            for ref, got in zip(grads[0], grads[1]):
                err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
                worst = max(worst, err if err == err else float("inf"))   # NaN counts as wrong
    return worst


def bf16_cpu_usable() -> bool:
    """Native bf16 on this CPU (:func:`native_bf16_cpu`) whose convolution gradients agree
    with fp32 at least on all but the smallest maps (:func:`bf16_fp32_map_edge`); warns once
    when the kernels are present but wrong."""
    if not native_bf16_cpu():
        return False
    if bf16_fp32_map_edge() is not None:
        return True
    warnings.warn(f"precision auto: this CPU's bf16 convolution gradients disagree with fp32 "
                  f"(relative error {bf16_conv_grad_error():.3g} on 3D feature maps of up to "
                  f"{PROBE_EDGES[-1]}^3 voxels; torch {torch.__version__}), so training runs in "
                  "32-true; set precision: bf16-mixed to force bf16", RuntimeWarning,
                  stacklevel=3)
    return False


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """The Lightning precision of ``OptimConfig.precision``: ``auto`` is ``bf16-mixed`` on a
    CPU with native bf16 that computes convolution gradients correctly, or correctly but for
    the smallest maps (:func:`bf16_cpu_usable`; 1.23x per fine-tuning step, metrics within
    their CIs) and
    ``32-true`` elsewhere, a CUDA GPU included: there bf16-mixed was no faster (0.89x per demo
    step, 1.01x per paper-size step on an H100; docs/benchmarks.md section 5), so
    ``bf16-mixed`` is an explicit choice (about 10% less GPU memory). Any other value is
    returned as given.

    Example:
        >>> resolve_precision("32-true")
        '32-true'
    """
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return "32-true"
    if accelerator in ("auto", "cpu") and bf16_cpu_usable():
        return "bf16-mixed"
    return "32-true"


__all__ = ["BF16_GRAD_TOLERANCE", "PROBE_EDGES", "native_bf16_cpu", "bf16_conv_grad_errors",
           "bf16_conv_grad_error", "bf16_fp32_map_edge", "bf16_cpu_usable", "resolve_precision"]
