"""The blocks of MedMAP's fusion: text guidance (CSA's element-wise product) and the
Cross-Cognition Transformer's bidirectional cross-attention.

:class:`TextGuidance` is the text-guided Transformer stream of the Cross-modal Semantic
Aggregation module. Every visual token ``x_n`` of a sequence attends over that sequence's K
projected text vectors ``t_k`` (the class-knowledge descriptions, or the case's own report); the
attended text vector ``a_n = sum_k softmax_k(q(x_n) . k(t_k)) v(t_k)`` depends on the token and
hence on the case, and modulates the token by element-wise product::

    f_vt[n] = x[n] * (1 + tanh(W a_n + b))

(the paper's ``f_vt = f_swin * text``). ``W`` and ``b`` start at zero, so at initialisation
``f_vt == f_swin`` and pre-trained features are not scrambled; the attention weights tell which
class description each token matches.

Example:
    >>> import torch
    >>> g = TextGuidance(dim=16, heads=2)
    >>> x, t = torch.randn(2, 8, 16), torch.randn(2, 7, 16)
    >>> out, text_vec, attn = g(x, t)
    >>> bool(torch.equal(out, x)), tuple(text_vec.shape), tuple(attn.shape)  # identity at init
    (True, (2, 8, 16), (2, 8, 7))
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TextGuidance", "CrossCognitionBlock"]


class TextGuidance(nn.Module):
    """Token-wise attention over K text vectors, then a gated element-wise product."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.gate = nn.Linear(dim, dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (b, N, d), text (b, K, d), text_mask (b, K) bool (True = real) ->
        (f_vt (b, N, d), the attended text vector of each token a (b, N, d), the attention
        weights over the K text vectors (b, N, K)). A row without any real text vector is left
        unchanged."""
        pad = None
        if text_mask is not None:
            has = text_mask.any(1)                                         # (b,)
            pad = ~(text_mask | ~has[:, None])                             # all-masked rows: attend anywhere
        a, w = self.attn(self.norm(tokens), text, text, key_padding_mask=pad,
                         need_weights=True, average_attn_weights=True)    # (b, N, d), (b, N, K)
        g = torch.tanh(self.gate(a))                                       # (b, N, d)
        if text_mask is not None:
            g = g * has[:, None, None].to(g.dtype)
        return tokens * (1.0 + g), a, w


class CrossCognitionBlock(nn.Module):
    """Bidirectional cross-attention: each token set attends to the other (pre-norm + FFN)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_a, self.norm_b = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.a_from_b = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.b_from_a = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn_a = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.ffn_b = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        na, nb = self.norm_a(a), self.norm_b(b)           # (B, Na, d), (B, Nb, d)
        a = a + self.a_from_b(na, nb, nb, need_weights=False)[0]
        b = b + self.b_from_a(nb, na, na, need_weights=False)[0]
        return a + self.ffn_a(a), b + self.ffn_b(b)
