"""The fast inference path of a MedMAP classifier: same weights, same fp32 numerics, less time.

``fast_classifier(model)`` prepares a loaded model for inference and returns a callable
:class:`FastClassifier` (``fast(images, present)`` -> the model's output dict) that runs it:

* under ``torch.inference_mode`` (no autograd bookkeeping);
* with the Swin experts' window attention through ``torch.nn.functional.scaled_dot_product_attention``
  (a fused kernel: the ``(windows, heads, 343, 343)`` score tensors of a window-7 Swin are never
  written out; on the paper's 128^3 input they are 1.4 GB per block), the relative-position bias
  and the shifted-window mask added per chunk of windows instead of expanded to every window of
  the batch;
* with each shifted-window mask computed once per forward and shared by the experts (MONAI
  rebuilds it in every stage of every expert);
* optionally with the conv streams in ``channels_last_3d`` (``channels_last=True``: no gain on
  the project's CPU), and with the experts and conv streams in bf16 autocast
  (``precision="bf16"``; their outputs go on in float32): on the project's CPU (AVX512-BF16)
  another 1.6-2.5x, with |delta p| up to 6e-4 and |delta logit| up to 7e-3 on the paper-size
  model. fp32 is the default; see ``docs/benchmarks.md``.

The attention change is exact up to floating-point rounding: the benchmark
(``benchmarks/inference.py``) and ``tests/test_fastpath.py`` compare the class probabilities with
the eager model's (fp32: max |delta p| <= 1e-3, in practice ~1e-6). The model is changed in
place only in how its attention modules run *without* gradients: with gradients enabled (training,
Grad-CAM) they run MONAI's own code, and the weights, ``state_dict`` and saved folders are
unchanged.

Example:
    >>> import torch
    >>> from medmap.fastpath import fast_classifier
    >>> from medmap.models.medmap import MedMAPClassifier, MedMAPConfig
    >>> model = MedMAPClassifier(MedMAPConfig.tiny(["T2WI", "C+A"], ["a", "b"])).eval()
    >>> fast = fast_classifier(model)
    >>> out = fast(torch.randn(1, 2, 1, 32, 32, 32), torch.ones(1, 2, dtype=torch.bool))
    >>> tuple(out["probs"].shape)
    (1, 2)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastClassifier", "fast_classifier", "sdpa_window_attention", "Precision"]

Precision = Literal["fp32", "bf16"]

# Windows per fused-attention call: bounds the bias + mask block (chunk x heads x n x n floats:
# 128 x 3 x 343^2 x 4 B = 181 MB at the paper's first stage) and keeps it in cache.
_WINDOW_CHUNK = 128


def _relative_bias(attn: nn.Module, n: int) -> torch.Tensor:
    """The relative position bias (heads, n, n) of a MONAI ``WindowAttention`` (its own code)."""
    idx = attn.relative_position_index[:n, :n].reshape(-1)
    return attn.relative_position_bias_table[idx].reshape(n, n, -1).permute(2, 0, 1).contiguous()


def sdpa_window_attention(attn: nn.Module, x: torch.Tensor,
                          mask: torch.Tensor | None) -> torch.Tensor:
    """MONAI ``WindowAttention.forward(x, mask)`` through fused attention (no gradient).

    ``x`` (B*nW, n, C): the windows of B volumes, window-major per volume as MONAI lays them out;
    ``mask`` (nW, n, n): the shifted-window mask (0 / -100) or None.
    """
    b, n, c = x.shape
    h = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)                                   # (b, h, n, c/h) each
    bias = _relative_bias(attn, n).to(q.dtype)                # (h, n, n)
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0),
                                             scale=attn.scale)
    else:
        nw = mask.shape[0]
        out = torch.empty_like(q)
        for s in range(0, b, nw):                             # one volume's windows at a time
            for j in range(0, nw, _WINDOW_CHUNK):
                e = min(nw, j + _WINDOW_CHUNK)
                m = bias.unsqueeze(0) + mask[j:e].unsqueeze(1).to(q.dtype)   # (w, h, n, n)
                out[s + j:s + e] = F.scaled_dot_product_attention(
                    q[s + j:s + e], k[s + j:s + e], v[s + j:s + e], attn_mask=m,
                    scale=attn.scale)
    x = out.transpose(1, 2).reshape(b, n, c)
    return attn.proj_drop(attn.proj(x))


def _window_attention_cls() -> type[nn.Module] | None:
    try:
        from monai.networks.nets.swin_unetr import WindowAttention
    except ImportError:  # pragma: no cover - MONAI is a dependency
        return None
    return WindowAttention


_FAST_CLASSES: dict[type, type] = {}


def _fast_class(base: type) -> type:
    """A subclass of MONAI's ``WindowAttention`` whose forward is fused when no gradient is
    recorded (same parameters and buffers, so ``isinstance`` and ``state_dict`` are unchanged)."""
    if base not in _FAST_CLASSES:
        def forward(self, x, mask):
            if torch.is_grad_enabled() or torch.jit.is_scripting():
                return base.forward(self, x, mask)
            return sdpa_window_attention(self, x, mask)

        _FAST_CLASSES[base] = type(f"Fused{base.__name__}", (base,),
                                   {"forward": forward, "__module__": __name__})
    return _FAST_CLASSES[base]


def _use_fused_attention(model: nn.Module) -> int:
    """Switch every MONAI window attention in ``model`` to the fused forward; returns how many."""
    base = _window_attention_cls()
    if base is None:
        return 0
    n = 0
    for mod in model.modules():
        if type(mod) is base:
            mod.__class__ = _fast_class(base)
            n += 1
        elif isinstance(mod, base) and type(mod).__name__.startswith("Fused"):
            n += 1
    return n


_MASK_LOCK = threading.RLock()          # one patcher at a time; a nested call is fine


@contextlib.contextmanager
def _shared_shift_masks() -> Iterator[None]:
    """While active, MONAI's ``compute_mask`` returns one tensor per (grid, window, shift,
    device): every expert's stage reuses it instead of rebuilding it (the masks depend only on
    the grid). The cache is dropped on exit."""
    from monai.networks.nets import swin_unetr

    with _MASK_LOCK:
        original = swin_unetr.compute_mask
        cache: dict[tuple, torch.Tensor] = {}

        def cached(dims, window_size, shift_size, device):
            key = (tuple(dims), tuple(window_size), tuple(shift_size), str(device))
            if key not in cache:
                cache[key] = original(dims, window_size, shift_size, device)
            return cache[key]

        swin_unetr.compute_mask = cached
        try:
            yield
        finally:
            swin_unetr.compute_mask = original
            cache.clear()


def _encoders(model: nn.Module) -> list[nn.Module]:
    """The heavy 3D encoders of a MedMAP classifier: the experts and the conv streams."""
    parts: list[nn.Module] = []
    experts = getattr(model, "experts", None)
    if experts is not None:
        parts += list(experts.encoders.values())
    conv = getattr(model, "conv_stream", None)
    if conv is not None:
        parts += list(conv.values())
    return parts


def _autocast_forward(enc: nn.Module) -> None:
    """Run ``enc`` in bf16 autocast when no gradient is recorded, returning float32 (its
    instance's ``forward`` is wrapped; parameters and ``state_dict`` are unchanged)."""
    if getattr(enc, "_medmap_bf16", False):
        return
    inner = enc.forward

    def forward(*args, **kwargs):
        if torch.is_grad_enabled():
            return inner(*args, **kwargs)
        dev = next(enc.parameters()).device.type
        with torch.autocast(dev, dtype=torch.bfloat16):
            out = inner(*args, **kwargs)
        if isinstance(out, tuple):
            return type(out)(*(t.float() if isinstance(t, torch.Tensor) else t for t in out))
        return out.float()

    enc.forward = forward
    enc._medmap_bf16 = True


class FastClassifier:
    """Runs a MedMAP classifier on the fast path (see the module doc); ``__call__`` takes what
    the model's ``forward`` takes and returns its output dict (probabilities in float32)."""

    def __init__(self, model: nn.Module, precision: Precision = "fp32",
                 channels_last: bool = False):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.model = model.eval()
        self.precision = precision
        self.channels_last = channels_last
        self.fused_attention = _use_fused_attention(model)
        if channels_last:
            part = getattr(model, "conv_stream", None)
            if part is not None:
                part.to(memory_format=torch.channels_last_3d)
        if precision == "bf16":
            for enc in _encoders(model):
                _autocast_forward(enc)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> str:
        """One line naming what this path does (printed by ``medmap predict``)."""
        bits = ["inference_mode", f"fused window attention ({self.fused_attention} modules)"
                if self.fused_attention else "no Swin attention to fuse"]
        if self.channels_last:
            bits.append("channels_last_3d conv streams")
        bits.append("bf16 autocast" if self.precision == "bf16" else "fp32")
        return ", ".join(bits)

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), _shared_shift_masks():
            return self.model(*args, **kwargs)


def fast_classifier(model: nn.Module, precision: Precision = "fp32",
                    channels_last: bool = False) -> FastClassifier:
    """``model`` (a loaded MedMAP classifier) on the fast inference path; see the module doc."""
    return FastClassifier(model, precision=precision, channels_last=channels_last)
