"""full_metrics against hand-computed values; bootstrap CIs; JSON output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medmap.metrics import _auc, _fast_auc, classification_metrics, full_metrics

# 5 cases, binary: P(class 1) = [.1, .6, .4, .8, .9], truth [0, 0, 1, 1, 1]
# predictions [0, 1, 0, 1, 1] -> accuracy 3/5, confusion [[1, 1], [1, 2]]
# AUC: positive scores {.4, .8, .9} vs negative {.1, .6}: 5 of 6 pairs ordered -> 5/6
LABELS = np.array([0, 0, 1, 1, 1])
P1 = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
PROBS = np.stack([1 - P1, P1], 1)


def test_classification_metrics_unchanged():
    m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert m == {"accuracy": 1.0, "balanced_accuracy": 1.0, "auc": 1.0}


def test_full_metrics_hand_computed_binary():
    m = full_metrics(LABELS, PROBS, ["neg", "pos"], n_boot=300, seed=1)
    assert m["n"] == 5 and m["classes"] == ["neg", "pos"]
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    neg, pos = m["per_class"]
    assert (neg["support"], pos["support"]) == (2, 3)
    assert pos["precision"] == pytest.approx(2 / 3) and pos["recall"] == pytest.approx(2 / 3)
    assert neg["precision"] == pytest.approx(1 / 2) and neg["recall"] == pytest.approx(1 / 2)
    assert pos["f1"] == pytest.approx(2 / 3)
    assert pos["auc"] == pytest.approx(5 / 6) and neg["auc"] == pytest.approx(5 / 6)
    roc = m["roc"][1]
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    assert np.all(np.diff(roc["fpr"]) >= 0)
    # bootstrap CIs contain the point estimates
    lo, hi = m["ci"]["accuracy"]
    assert lo <= m["accuracy"] <= hi
    lo, hi = m["ci"]["auc"]
    assert lo <= m["auc"] <= hi
    assert m["n_boot"] == 300 and 0 < m["n_boot_auc"] < 300   # single-class resamples skipped
    json.dumps(m, allow_nan=False)                             # strict JSON


def test_full_metrics_multiclass_and_absent_class():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1])            # class 2 never occurs
    probs = rng.dirichlet(np.ones(3), size=labels.size)
    m = full_metrics(labels, probs, ["a", "b", "c"], n_boot=50)
    assert m["confusion_matrix"] == np.asarray(
        [[np.sum((labels == i) & (probs.argmax(1) == j)) for j in range(3)] for i in range(3)]
    ).tolist()
    assert m["roc"][2]["fpr"] is None and m["per_class"][2]["auc"] is None
    assert m["per_class"][2]["support"] == 0
    # two classes present out of three: AUC of b vs a on renormalised probabilities
    sub = probs[:, :2] / probs[:, :2].sum(1, keepdims=True)
    assert m["auc"] == pytest.approx(roc_auc_score(labels == 1, sub[:, 1]))
    json.dumps(m, allow_nan=False)


def test_single_class_gives_no_auc():
    m = full_metrics(np.array([1, 1, 1]), np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]]),
                     ["a", "b"], n_boot=20)
    assert m["auc"] is None and m["ci"]["auc"] == [None, None] and m["n_boot_auc"] == 0
    assert m["accuracy"] == pytest.approx(2 / 3)
    json.dumps(m, allow_nan=False)


def test_bad_inputs():
    with pytest.raises(ValueError, match="probs must be"):
        full_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, ["a", "b"])
    with pytest.raises(ValueError, match="outside 0..1"):
        full_metrics(np.array([0, 2]), np.ones((2, 2)) / 2, ["a", "b"])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_fast_bootstrap_auc_equals_sklearn(k):
    rng = np.random.default_rng(k)
    for n in (6, 15, 40):
        labels = rng.integers(0, k, n)
        probs = np.round(rng.dirichlet(np.ones(k), n), 1) + 1e-3     # ties on purpose
        probs /= probs.sum(1, keepdims=True)
        a, b = _auc(labels, probs), _fast_auc(labels, probs)
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-12)
