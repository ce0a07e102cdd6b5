"""Which numeric precision a training stage runs in (``OptimConfig.precision: auto``).

``auto`` is ``bf16-mixed`` on a CPU that computes bf16 natively *and correctly*, ``32-true``
elsewhere (a CUDA GPU included: bf16-mixed measured no faster there, docs/benchmarks.md
section 5). "Correctly" is checked, not assumed: on an AMD EPYC with AVX512-BF16 and no AMX,
torch 2.13's oneDNN (v3.12) returned weight gradients of ~1e36 for a bf16 3D convolution on a
2x2x2 feature map (the demo's conv stream ends on one), so the demo's liver fine-tuning reached
NaN in its second epoch there while it trained normally on Intel CPUs with AMX.
:func:`bf16_conv_grad_error` measures that case against fp32 once per process, and ``auto``
keeps fp32 where it is wrong.

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


@functools.lru_cache(maxsize=1)
def bf16_conv_grad_error() -> float:
    """The largest relative error, against fp32, of the input and weight gradients of small
    3D convolutions computed under CPU bf16 autocast: feature maps of 2^3 to 4^3 voxels, the
    sizes the demo's encoders end on (about 20 ms, once per process). Working kernels give
    about 0.004; a value above :data:`BF16_GRAD_TOLERANCE` means this machine's bf16 kernels
    are wrong."""
    # the global RNG is left as it was: the probe runs after a stage has seeded and built its
    # model, and dropout and augmentation draw from that RNG later
    with torch.random.fork_rng(devices=[]):
        return _conv_grad_error(torch.Generator().manual_seed(0))


def _conv_grad_error(gen: torch.Generator) -> float:
    worst = 0.0
    for batch, ch, size in ((8, 64, 2), (8, 16, 2), (2, 64, 2), (4, 32, 4)):
        for _ in range(2):         # a broken kernel read stale memory: not every call was wrong
            conv = torch.nn.Conv3d(ch, ch, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.05)
            x = torch.randn(batch, ch, size, size, size, generator=gen, requires_grad=True)
            g = torch.randn(batch, ch, size, size, size, generator=gen)
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
    with fp32 (:func:`bf16_conv_grad_error`); warns once when the kernels are present but
    wrong."""
    if not native_bf16_cpu():
        return False
    err = bf16_conv_grad_error()
    if err <= BF16_GRAD_TOLERANCE:
        return True
    warnings.warn(f"precision auto: this CPU's bf16 convolution gradients disagree with fp32 "
                  f"(relative error {err:.3g} on small 3D feature maps; torch "
                  f"{torch.__version__}), so training runs in 32-true; set precision: "
                  "bf16-mixed to force bf16", RuntimeWarning, stacklevel=3)
    return False


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """The Lightning precision of ``OptimConfig.precision``: ``auto`` is ``bf16-mixed`` on a
    CPU with native bf16 that computes convolution gradients correctly
    (:func:`bf16_cpu_usable`; 1.23x per fine-tuning step, metrics within their CIs) and
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


__all__ = ["BF16_GRAD_TOLERANCE", "native_bf16_cpu", "bf16_conv_grad_error", "bf16_cpu_usable",
           "resolve_precision"]
