"""A multinomial logistic regression whose L2 strength is chosen by cross-validation: the
linear model behind the radiomics baseline and the stats head's starting fit.

Example:
    >>> import numpy as np
    >>> X = np.r_[np.zeros((6, 2)), np.ones((6, 2))]; y = np.r_[[0] * 6, [1] * 6]
    >>> clf = logistic_cv(y, Cs=(0.1, 1.0), folds=3, seed=0).fit(X, y)
    >>> clf.predict([[0, 0], [1, 1]]).tolist()
    [0, 1]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def logistic_cv(y: np.ndarray, Cs: Sequence[float], folds: int = 5, seed: int = 0,
                max_iter: int = 5000, context: str = "logistic regression"):
    """An unfitted scikit-learn classifier for labels ``y`` (class indices): an L2
    ``LogisticRegressionCV`` over ``Cs`` scored by log-loss on stratified, shuffled folds
    (at most ``folds``, at most the rarest class's count); where a class has a single case,
    no fold can hold it out, so ``C=1`` with a warning naming ``context``."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    k = int(min(folds, np.bincount(y)[np.unique(y)].min()))
    if k >= 2:
        cv = StratifiedKFold(k, shuffle=True, random_state=seed)
        return LogisticRegressionCV(Cs=list(Cs), cv=cv, scoring="neg_log_loss",
                                    max_iter=max_iter, l1_ratios=(0.0,),  # L2
                                    use_legacy_attributes=False)
    warnings.warn(f"{context}: a class has fewer than 2 training cases, so C cannot be "
                  "cross-validated; using C=1", stacklevel=3)
    return LogisticRegression(C=1.0, max_iter=max_iter)


def chosen_c(clf) -> float:
    """The ``C`` a fitted :func:`logistic_cv` classifier uses."""
    return float(np.ravel(clf.C_)[0]) if hasattr(clf, "C_") else float(clf.C)


__all__ = ["logistic_cv", "chosen_c"]
