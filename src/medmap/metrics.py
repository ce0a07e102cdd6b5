"""Classification metrics from scikit-learn: accuracy, balanced accuracy, macro one-vs-rest AUC
(:func:`classification_metrics`) and the full evaluation set with per-class scores, confusion
matrix, ROC curves and bootstrap confidence intervals (:func:`full_metrics`).

Example:
    >>> import numpy as np
    >>> m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    >>> m["accuracy"], m["auc"]
    (1.0, 1.0)
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``balanced_accuracy`` and ``auc`` (binary AUC for two classes, macro
    one-vs-rest otherwise, over the classes present; NaN when fewer than two are present)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(1)
    out = {"accuracy": float(accuracy_score(labels, pred)),
           "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
           "auc": _auc(labels, probs)}
    return out


def _renormalised(probs: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The present classes' probability columns rescaled to sum to 1 (uniform where a row has
    zero probability on all of them)."""
    sub = probs[:, present]
    tot = sub.sum(1, keepdims=True)
    return np.where(tot > 0, sub / np.where(tot > 0, tot, 1.0), 1.0 / len(present))


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC (two classes) or macro one-vs-rest AUC over the classes present; NaN when
    fewer than two classes are present."""
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    sub = _renormalised(probs, present)
    if len(present) > 2:
        return float(roc_auc_score(labels, sub, multi_class="ovr", average="macro",
                                   labels=present))
    return float(roc_auc_score(labels == present[1], sub[:, 1]))


def _binary_auc_ranks(pos: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count 1/2): equal to sklearn's ``roc_auc_score``, ~100x faster."""
    from scipy.stats import rankdata

    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _fast_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Same value as :func:`_auc` (used for the bootstrap resamples)."""
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return _binary_auc_ranks(labels == 1, probs[:, 1])
    sub = _renormalised(probs, present)
    if len(present) == 2:
        return _binary_auc_ranks(labels == present[1], sub[:, 1])
    return float(np.mean([_binary_auc_ranks(labels == c, sub[:, j])
                          for j, c in enumerate(present)]))


# ---- bootstrap --------------------------------------------------------------------------------
def _batched_auc(labels: np.ndarray, probs: np.ndarray, present: np.ndarray) -> np.ndarray:
    """:func:`_fast_auc` of many resamples at once: labels (B, n), probs (B, n, K), every
    resample holding exactly the classes ``present`` -> (B,)."""
    from scipy.stats import rankdata

    if probs.shape[-1] == 2:
        pos = labels == 1                                            # (B, n)
        scores = probs[..., 1][..., None]                            # (B, n, 1)
        pos = pos[..., None]
    else:
        sub = probs[..., present]
        tot = sub.sum(-1, keepdims=True)
        sub = np.where(tot > 0, sub / np.where(tot > 0, tot, 1.0), 1.0 / len(present))
        if len(present) == 2:
            scores, pos = sub[..., 1:2], (labels == present[1])[..., None]
        else:
            scores, pos = sub, labels[..., None] == present          # (B, n, K')
    ranks = rankdata(scores, axis=1)                                 # ties: average ranks
    n_pos = pos.sum(1)                                               # (B, K')
    n_neg = pos.shape[1] - n_pos
    auc = ((ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2.0) / np.maximum(n_pos * n_neg, 1)
    return auc.mean(-1)


def bootstrap_scores(labels: np.ndarray, probs: np.ndarray, correct: np.ndarray,
                     n_boot: int, seed: int = 0) -> tuple[list[float], list[float]]:
    """Accuracy and AUC of ``n_boot`` resamples of the cases (with replacement), vectorised;
    resamples holding one class only are left out of the AUC list.

    Example:
        >>> y = np.array([0, 1, 0, 1]); p = np.array([[.9, .1], [.2, .8], [.6, .4], [.3, .7]])
        >>> acc, auc = bootstrap_scores(y, p, p.argmax(1) == y, 20)
        >>> len(acc), all(a == 1.0 for a in auc)
        (20, True)
    """
    n, n_boot = labels.size, max(0, int(n_boot))
    if n_boot == 0 or n == 0:
        return [], []
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))                            # (B, n)
    acc = np.asarray(correct, np.float64)[idx].mean(1)
    lab = labels[idx]                                                # (B, n)
    classes = np.unique(labels)
    have = (lab[..., None] == classes).any(1)                        # (B, K) class present
    n_cls = have.sum(1)
    auc = np.full(n_boot, np.nan)
    full = have.all(1)                                               # every class present
    if full.any() and len(classes) >= 2:
        auc[full] = _batched_auc(lab[full], probs[idx[full]], classes)
    for b in np.nonzero(~full & (n_cls >= 2))[0]:                    # rare: a class missing
        auc[b] = _fast_auc(lab[b], probs[idx[b]])
    keep = (n_cls >= 2) & np.isfinite(auc)
    return acc.tolist(), auc[keep].tolist()


# ---- full evaluation metrics ----------------------------------------------------------------
def _num(x: float) -> float | None:
    """A JSON-safe float (None for NaN / Inf)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _percentile_ci(values: list[float], level: float = 0.95) -> list[float | None]:
    if not values:
        return [None, None]
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [100 * a, 100 * (1 - a)])
    return [_num(lo), _num(hi)]


def mean_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95
            ) -> list[float | None]:
    """Percentile bootstrap CI of the mean of per-case ``values`` (Dice, per-report scores,
    0/1 correctness), vectorised; ``[None, None]`` without values.

    Example:
        >>> mean_ci([1.0, 1.0, 1.0])
        [1.0, 1.0]
    """
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0 or n_boot <= 0:
        return [None, None]
    idx = np.random.default_rng(seed).integers(0, v.size, (int(n_boot), v.size))
    return _percentile_ci(v[idx].mean(1).tolist(), level)


def full_metrics(labels, probs, class_names, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Every classification metric of the evaluation report, JSON-serialisable.

    Args:
        labels: (N,) integer class indices (0..K-1).
        probs: (N, K) class probabilities (rows sum to 1).
        class_names: the K class names (their order is the probability columns').
        n_boot: bootstrap resamples for the confidence intervals (0 disables them).
        seed: bootstrap RNG seed.
        level: confidence level of the percentile intervals.

    Returns a dict with ``n``, ``accuracy``, ``balanced_accuracy``, ``auc`` (binary AUC for two
    classes, macro one-vs-rest over the classes present otherwise; None when fewer than two
    classes are present), ``ci`` (``{"accuracy": [lo, hi], "auc": [lo, hi]}``, percentile
    bootstrap over cases resampled with replacement; resamples holding one class only are skipped
    for AUC; ``n_boot`` / ``n_boot_auc`` say how many were used), ``per_class`` (one dict per
    class: ``class``, ``precision``, ``recall``, ``f1``, ``support``, one-vs-rest ``auc``),
    ``confusion_matrix`` (K x K list, rows = true class, columns = predicted, sklearn's
    convention), ``roc`` (per class ``{"class", "fpr", "tpr", "auc"}``, or ``fpr``/``tpr`` None
    when the class has no positive or no negative case) and ``classes``. Undefined values
    (NaN) are None.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_curve

    labels = np.asarray(labels).astype(int).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    names = [str(c) for c in class_names]
    K = len(names)
    if probs.ndim != 2 or probs.shape != (labels.shape[0], K):
        raise ValueError(f"probs must be (N={labels.shape[0]}, K={K}), got {probs.shape}")
    if labels.size == 0:
        raise ValueError("full_metrics needs at least one labelled case")
    bad = labels[(labels < 0) | (labels >= K)]
    if bad.size:
        raise ValueError(f"labels {sorted(set(bad.tolist()))} are outside 0..{K - 1} "
                         f"({', '.join(names)})")
    pred = probs.argmax(1)
    with warnings.catch_warnings():     # "y_pred contains classes not in y_true": expected here
        warnings.simplefilter("ignore", UserWarning)
        base = classification_metrics(labels, probs)
    ks = list(range(K))
    prec, rec, f1, sup = precision_recall_fscore_support(labels, pred, labels=ks,
                                                         zero_division=0)
    per_class, roc = [], []
    for k in ks:
        pos = labels == k
        auc_k = fpr = tpr = None
        if pos.any() and (~pos).any():
            f, t, _ = roc_curve(pos, probs[:, k])
            fpr, tpr = [float(v) for v in f], [float(v) for v in t]
            auc_k = _num(roc_auc_score(pos, probs[:, k]))
        per_class.append({"class": names[k], "precision": float(prec[k]), "recall": float(rec[k]),
                          "f1": float(f1[k]), "support": int(sup[k]), "auc": auc_k})
        roc.append({"class": names[k], "fpr": fpr, "tpr": tpr, "auc": auc_k})

    # bootstrap over cases (vectorised: all resamples at once)
    n = labels.size
    boot_acc, boot_auc = bootstrap_scores(labels, probs, pred == labels, n_boot, seed)
    return {
        "n": int(n),
        "classes": names,
        "accuracy": _num(base["accuracy"]),
        "balanced_accuracy": _num(base["balanced_accuracy"]),
        "auc": _num(base["auc"]),
        "ci": {"level": level,
               "accuracy": _percentile_ci(boot_acc, level),
               "auc": _percentile_ci(boot_auc, level)},
        "n_boot": len(boot_acc),
        "n_boot_auc": len(boot_auc),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, pred, labels=ks).astype(int).tolist(),
        "roc": roc,
    }
