"""MG-3D's cross-modal attention and multi-modal fusion layers (paper Sec. III-B, Fig. 4).

:class:`CrossModalAttention` mixes a *dominant* token set (B, N, d) with a *guide* token set
(B, S, d), and always returns tokens in the dominant's layout (B, N, d):

* ``mode="proposed"`` (the paper's, Fig. 4b, eq. 1/3): the dominant modality supplies keys and
  values, the guide the queries. Each guide token s gives an attention map A_s over the dominant
  tokens (softmax over N); the dominant values are weighted by these sentence-specific maps,
  averaged over the guide tokens (the paper's sum / D_S) and rescaled by N so that uniform
  attention weights every value by 1: ``H[n] = N * mean_s A_s[n] * W_V X[n]`` (per head).
* ``mode="classical"`` (Fig. 4a): the dominant tokens are the queries and the guide supplies keys
  and values (ordinary cross-attention), so the output is generated from the guide's values.

MIM is volume-dominated (volume tokens dominant, sentence features guide); MLM is
text-dominated (word features dominant, volume tokens guide). :meth:`CrossModalAttention.per_query`
gives one vector per guide token (eq. 11, the sentence-specific global visual features).

:class:`FusionLayer` = pre-norm self-attention + cross-modal attention + feed-forward, each with a
residual connection; :class:`FusionStack` stacks them and ends with a LayerNorm.

Example:
    >>> import torch
    >>> layer = FusionStack(dim=16, heads=2, layers=1)
    >>> out = layer(torch.randn(2, 8, 16), torch.randn(2, 3, 16))
    >>> tuple(out.shape)
    (2, 8, 16)
"""

from __future__ import annotations

import torch
from torch import nn

from medmap.config import UserError

__all__ = ["CrossModalAttention", "FusionLayer", "FusionStack", "AttentionPool"]

MODES = ("proposed", "classical")


def _masked_softmax(logits: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim; ``key_mask`` (B, K) bool, True = real key."""
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :], torch.finfo(logits.dtype).min)
    return logits.softmax(-1)


class CrossModalAttention(nn.Module):
    """Multi-head cross-modal attention; see the module doc for the two modes."""

    def __init__(self, dim: int, heads: int, mode: str = "proposed"):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"cross-modal attention mode must be one of {MODES}, got {mode!r}")
        if dim % heads:
            raise UserError(f"dim {dim} must be divisible by heads {heads}")
        self.dim, self.heads, self.mode = dim, heads, mode
        self.scale = (dim // heads) ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:        # (B, n, d) -> (B, h, n, dh)
        B, n, _ = x.shape
        return x.view(B, n, self.heads, -1).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:        # (B, h, n, dh) -> (B, n, d)
        B, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(B, n, self.dim)

    def attention_map(self, queries: torch.Tensor, keys: torch.Tensor,
                      key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, h, Nq, Nk) attention of ``queries`` (B, Nq, d) over ``keys`` (B, Nk, d)."""
        q, k = self._split(self.q(queries)), self._split(self.k(keys))
        return _masked_softmax(q @ k.transpose(-1, -2) * self.scale, key_mask)

    def forward(self, dominant: torch.Tensor, guide: torch.Tensor,
                dominant_mask: torch.Tensor | None = None,
                guide_mask: torch.Tensor | None = None) -> torch.Tensor:
        """dominant (B, N, d), guide (B, S, d), masks (B, N) / (B, S) bool -> (B, N, d)."""
        if self.mode == "classical":
            attn = self.attention_map(dominant, guide, guide_mask)        # (B, h, N, S)
            return self.out(self._merge(attn @ self._split(self.v(guide))))
        attn = self.attention_map(guide, dominant, dominant_mask)          # (B, h, S, N)
        if guide_mask is None:
            mean_map = attn.mean(2)                                        # (B, h, N)
        else:
            g = guide_mask.to(attn.dtype)[:, None, :, None]                # (B, 1, S, 1)
            mean_map = (attn * g).sum(2) / g.sum(2).clamp_min(1.0)
        n = (dominant_mask.sum(1).to(attn.dtype) if dominant_mask is not None
             else attn.new_full((dominant.shape[0],), dominant.shape[1]))  # (B,)
        weight = mean_map * n[:, None, None]                               # (B, h, N)
        values = self._split(self.v(dominant))                             # (B, h, N, dh)
        return self.out(self._merge(values * weight[..., None]))

    def per_query(self, dominant: torch.Tensor, guide: torch.Tensor,
                  dominant_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 11: one feature per guide token, (B, S, d) = softmax(Q_guide K_dom^T) V_dom."""
        attn = self.attention_map(guide, dominant, dominant_mask)          # (B, h, S, N)
        return self.out(self._merge(attn @ self._split(self.v(dominant))))


class FusionLayer(nn.Module):
    """Pre-norm Transformer layer: self-attention on the dominant tokens, cross-modal attention
    (dominant = keys/values in the proposed mode), feed-forward; residual around each."""

    def __init__(self, dim: int, heads: int, mode: str = "proposed", dropout: float = 0.0,
                 mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2, self.norm_guide = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross = CrossModalAttention(dim, heads, mode)
        self.norm3 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, guide: torch.Tensor, x_mask: torch.Tensor | None = None,
                guide_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)                                                  # (B, N, d)
        pad = None if x_mask is None else ~x_mask
        x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
        x = x + self.drop(self.cross(self.norm2(x), self.norm_guide(guide), x_mask, guide_mask))
        return x + self.drop(self.ffn(self.norm3(x)))


class FusionStack(nn.Module):
    """``layers`` :class:`FusionLayer` s and a final LayerNorm; output in the dominant layout."""

    def __init__(self, dim: int, heads: int, layers: int = 2, mode: str = "proposed",
                 dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList([FusionLayer(dim, heads, mode, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, guide: torch.Tensor, x_mask: torch.Tensor | None = None,
                guide_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, guide, x_mask, guide_mask)
        return self.norm(x)


class AttentionPool(nn.Module):
    """Self-attention pooling: a learned query attends over the tokens -> (B, d)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, n, d), mask (B, n) bool (True = real; rows without any are allowed)."""
        pad = None
        if mask is not None:
            # a row with no real token would give NaN; let it attend everywhere (masked later)
            pad = ~(mask | ~mask.any(1, keepdim=True))
        q = self.query.expand(tokens.shape[0], -1, -1)
        return self.norm(self.attn(q, tokens, tokens, key_padding_mask=pad,
                                   need_weights=False)[0][:, 0])
