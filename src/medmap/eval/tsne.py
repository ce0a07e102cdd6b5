"""2D embedding of fused case features for the report: scikit-learn's t-SNE with a perplexity
adapted to small evaluation sets.

Example:
    >>> import numpy as np
    >>> tsne_embedding(np.random.default_rng(0).normal(size=(12, 8))).shape
    (12, 2)
"""

from __future__ import annotations

import numpy as np

__all__ = ["tsne_embedding", "tsne_perplexity", "tsne_method"]


def tsne_perplexity(n: int, default: float = 30.0) -> float:
    """``min(default, (n - 1) / 3)``, at least 1: t-SNE needs perplexity < n samples."""
    return float(max(1.0, min(default, (n - 1) / 3.0)))


def tsne_embedding(features, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """(N, 2) coordinates of ``features`` (N, d).

    t-SNE (PCA init, ``random_state=seed``) for N >= 5; with fewer cases, where t-SNE is
    meaningless, the first two principal components (zeros for N == 1). The method used is in
    :func:`tsne_method`.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, d), got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    if n < 5:
        return _pca2(x)
    from sklearn.manifold import TSNE

    p = tsne_perplexity(n) if perplexity is None else float(perplexity)
    p = min(p, n - 1.0)
    return TSNE(n_components=2, perplexity=p, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x).astype(np.float64)


def tsne_method(n: int) -> str:
    """Which projection :func:`tsne_embedding` uses for ``n`` cases."""
    if n >= 5:
        return f"t-SNE (perplexity {tsne_perplexity(n):.1f})"
    return "PCA (too few cases for t-SNE)"


def _pca2(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(0, keepdims=True)
    if x.shape[0] < 2 or not np.any(xc):
        return np.zeros((x.shape[0], 2))
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    out = xc @ vt[:2].T
    if out.shape[1] < 2:
        out = np.concatenate([out, np.zeros((out.shape[0], 2 - out.shape[1]))], 1)
    return out
