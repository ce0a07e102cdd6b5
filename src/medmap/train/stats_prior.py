"""Start the stats head from a fit (``model.stats_head_init: fit``).

The stats head is a linear classifier on every sequence's standardised lesion statistics (the
radiomics baseline's kind of model) trained jointly with the deep model. Trained jointly from
zero it lags a logistic regression fitted on the same statistics: the deep part fits the
training cases within a few epochs, after which the loss sends the linear part little
gradient. This fits that logistic regression first, to convergence, on the training cases
(unaugmented; L2 strength by cross-validation, :func:`medmap.linear.logistic_cv`), and starts
the head from it, as linear-probe-then-fine-tune does for features.

Example (a tiny model with ``stats_head: true``, ``stats_head_init: fit``):
    >>> summary = fit_stats_prior(model, train_dataset, collate, seed=0)   # doctest: +SKIP
    >>> sorted(summary)                                                     # doctest: +SKIP
    ['C', 'n_cases', 'train_accuracy']
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from medmap.linear import chosen_c, logistic_cv
from medmap.models.medmap import MedMAPClassifier
from medmap.models.regions import LesionGeometry, region_stats_per_channel

# the L2 strengths tried (as the radiomics baseline's default grid)
CS = tuple(float(c) for c in np.logspace(-3, 2, 11))


@torch.no_grad()
def training_statistics(dataset: Sequence, collate: Callable[[list], dict],
                        batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every case's raw region statistics, in dataset order: ``(stats (N, M, 8), present
    (N, M), labels (N,))``; ``collate`` batches the dataset's items without augmentation
    (the validation collate), absent sequences' statistics are left as computed (unused)."""
    stats, present, labels = [], [], []
    for i in range(0, len(dataset), batch_size):
        b = collate([dataset[j] for j in range(i, min(len(dataset), i + batch_size))])
        regions = LesionGeometry(b["mask"]).regions                      # (B, 4, D, H, W)
        stats.append(region_stats_per_channel(b["images"][:, :, 0].float(), regions))
        present.append(b["present"].bool())
        labels.append(b["label"])
    return (torch.cat(stats).numpy().astype(np.float64), torch.cat(present).numpy(),
            torch.cat(labels).numpy())


def standardise(stats: np.ndarray, present: np.ndarray, eps: float = 1e-5,
                pooled: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X (N, M * 8), mean (M, 8), var (M, 8))``: each sequence's statistics standardised by
    the moments of the cases that have it (unbiased variance, as batch norm's running
    estimate), absent ones 0, as the model's statistics batch norms do; ``pooled``: by the
    moments of every present (case, sequence) pair, one norm for all sequences (a shared
    encoder's)."""
    N, M, k = stats.shape
    mean, var = np.zeros((M, k)), np.ones((M, k))
    for m in range(M):
        rows = stats[present] if pooled else stats[present[:, m], m]
        if len(rows):
            mean[m] = rows.mean(0)
        if len(rows) > 1:
            var[m] = rows.var(0, ddof=1)
    z = (stats - mean) / np.sqrt(var + eps)
    z = np.where(present[..., None], z, 0.0)
    return z.reshape(N, M * k), mean, var


def fit_stats_prior(model: MedMAPClassifier, dataset: Sequence, collate: Callable[[list], dict],
                    seed: int = 0) -> dict[str, Any]:
    """Fit the logistic regression on ``dataset``'s standardised statistics and start
    ``model``'s statistics batch norms and stats head from it
    (:meth:`MedMAPClassifier.set_stats_prior`). Classes without a training case get a bias
    10 below the lowest fitted one. Returns ``{"C", "train_accuracy", "n_cases"}``."""
    stats, present, y = training_statistics(dataset, collate)
    X, mean, var = standardise(stats, present, pooled=model.cfg.shared_encoder)
    C = len(model.cfg.classes)
    seen = np.unique(y)
    if seen.size < 2:
        warnings.warn("stats_head_init: fit needs training cases of at least two classes; "
                      "the stats head starts from zero", stacklevel=2)
        return {"C": None, "train_accuracy": None, "n_cases": int(len(y))}
    clf = logistic_cv(y, CS, folds=5, seed=seed, context="stats_head_init: fit")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        warnings.filterwarnings("ignore", message=".*converge.*")     # notes at extreme C
        clf.fit(X, y)
    weight, bias = np.zeros((C, X.shape[1])), np.zeros(C)
    if seen.size == 2:          # one coefficient row: the log-odds of classes_[1] against [0]
        weight[clf.classes_[1]], bias[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
    else:
        weight[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
    unseen = np.setdiff1d(np.arange(C), clf.classes_)
    bias[unseen] = bias[clf.classes_].min() - 10.0
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    model.set_stats_prior(f(mean), f(var), f(weight), f(bias))
    return {"C": chosen_c(clf), "train_accuracy": float((clf.predict(X) == y).mean()),
            "n_cases": int(len(y))}


__all__ = ["fit_stats_prior", "training_statistics", "standardise"]
