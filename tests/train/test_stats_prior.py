"""stats_head_init: fit -- the stats head and the statistics' batch norms start from a logistic
regression fitted on the training cases' standardised lesion statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmap.models.medmap import MedMAPClassifier, MedMAPConfig
from medmap.models.regions import LesionGeometry, lesion_regions, region_stats
from medmap.train.stats_prior import fit_stats_prior, standardise, training_statistics


def _cube_mask(lo=8, hi=24, n=32):
    m = torch.zeros(1, 1, n, n, n)
    m[:, :, lo:hi, lo:hi, lo:hi] = 1
    return m


def _cases(labels, seed=0):
    """One item per label: two sequences, the lesion's brightness in the first = its class."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for y in labels:
        x = torch.randn(2, 1, 32, 32, 32, generator=g)
        x[0, :, 8:24, 8:24, 8:24] += 1.5 * y
        items.append({"images": x, "mask": _cube_mask()[0], "label": int(y)})
    return items


def _collate(items):
    return {"images": torch.stack([i["images"] for i in items]),
            "mask": torch.stack([i["mask"] for i in items]),
            "present": torch.ones(len(items), 2, dtype=torch.bool),
            "label": torch.tensor([i["label"] for i in items])}


def _stats_head_share(model, batch):
    """(the logits the stats head adds in the model's eval forward pass, its weight, bias);
    leaves the head zeroed."""
    model.eval()
    with torch.no_grad():
        full = model(batch["images"], batch["present"], lesion_mask=batch["mask"])["logits"]
        w, b = model.stats_head.weight.clone(), model.stats_head.bias.clone()
        model.stats_head.weight.zero_(), model.stats_head.bias.zero_()
        deep = model(batch["images"], batch["present"], lesion_mask=batch["mask"])["logits"]
    return full - deep, w, b


def test_standardise_matches_a_hand_computation():
    stats = np.arange(3 * 2 * 8, dtype=float).reshape(3, 2, 8) ** 1.5
    present = np.array([[True, True], [True, False], [False, True]])
    X, mean, var = standardise(stats, present, eps=0.0)
    a, b = stats[[0, 1], 0], stats[[0, 2], 1]          # the cases that have each sequence
    assert np.allclose(mean, [a.mean(0), b.mean(0)])
    assert np.allclose(var, [a.var(0, ddof=1), b.var(0, ddof=1)])
    assert np.allclose(X[0, :8], (stats[0, 0] - a.mean(0)) / a.std(0, ddof=1))
    assert np.allclose(X[2, 8:], (stats[2, 1] - b.mean(0)) / b.std(0, ddof=1))
    assert not X[1, 8:].any() and not X[2, :8].any()                  # absent: 0


@pytest.mark.parametrize("labels, classes", [([0, 1, 2] * 5, ["a", "b", "c"]),
                                             ([0, 2] * 6, ["a", "b", "c"])])
def test_the_fit_starts_the_head_and_the_norms_and_the_model_reads_them(labels, classes):
    """After the fit the model's own forward pass (eval) adds exactly the fitted linear model's
    logits on the statistics standardised by their training moments, and those logits
    separate the training cases; a class without a training case is never predicted."""
    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(["T2WI", "C+A"], classes, region_intensity=True, stats_head=True,
                            stats_head_init="fit")
    model = MedMAPClassifier(cfg)
    items = _cases(labels)
    summary = fit_stats_prior(model, items, _collate, seed=0)
    assert summary["train_accuracy"] == 1.0 and summary["n_cases"] == len(labels)
    stats, present, y = training_statistics(items, _collate)
    X, mean, var = standardise(stats, present)
    for m, name in enumerate(cfg.modalities):
        assert torch.allclose(model.intensity_norm[name].running_mean.double(),
                              torch.as_tensor(mean[m]))
    added, w, b = _stats_head_share(model, _collate(items))
    prior = torch.as_tensor(X, dtype=torch.float32) @ w.T + b
    assert torch.allclose(added, prior, atol=1e-3)
    assert (prior.argmax(1) == torch.as_tensor(y)).all()
    unseen = sorted(set(range(len(classes))) - set(labels))
    for c in unseen:
        assert not w[c].any() and b[c] < b.max() - 9


def test_region_stats_of_the_fit_are_the_models():
    """training_statistics reads the same numbers as the model's region statistics."""
    items = _cases([0, 1])
    stats, present, _ = training_statistics(items, _collate)
    regions = lesion_regions(_cube_mask())
    assert np.allclose(stats[1, 0], region_stats(items[1]["images"][0:1], regions)[0].numpy(),
                       atol=1e-5)
    assert present.all()


def test_config_errors_name_the_fix():
    from medmap.config import ConfigError

    assert MedMAPConfig().stats_head_init == "fit"          # read only with a stats head
    with pytest.raises(ConfigError, match="stats_head_init must be 'zero' or 'fit'"):
        MedMAPConfig(region_intensity=True, stats_head=True, stats_head_init="lr")
    model = MedMAPClassifier(MedMAPConfig.tiny(["T2WI"], ["a", "b"], region_intensity=True,
                                               stats_head=True))
    with pytest.raises(ValueError, match=r"expected mean / var \(1, 8\)"):
        model.set_stats_prior(torch.zeros(2, 8), torch.ones(2, 8), torch.zeros(2, 8),
                              torch.zeros(2))


def test_a_shared_encoder_gets_moments_pooled_over_its_sequences():
    """One statistics norm for every sequence (the global-CLIP row's shared encoder): the fit
    standardises by the pooled moments, and the model's forward pass adds its logits exactly."""
    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(["T2WI", "C+A"], ["a", "b"], region_intensity=True,
                            stats_head=True, shared_encoder=True)
    model = MedMAPClassifier(cfg)
    items = _cases([0, 1] * 6)
    fit_stats_prior(model, items, _collate, seed=0)
    stats, present, _ = training_statistics(items, _collate)
    X, mean, _ = standardise(stats, present, pooled=True)
    assert np.allclose(mean[0], stats.reshape(-1, 8).mean(0))
    added, w, b = _stats_head_share(model, _collate(items))
    assert torch.allclose(added, torch.as_tensor(X, dtype=torch.float32) @ w.T + b, atol=1e-3)
    with pytest.raises(ValueError, match="pass moments pooled over the modalities"):
        model.set_stats_prior(torch.randn(2, 8), torch.ones(2, 8), w, b)


def test_a_shared_norm_trains_on_the_moments_it_evaluates_with():
    """In training the shared encoder's statistics norm standardises every present (case,
    sequence) pair by their pooled batch moments, as its running estimates (and the fit) do
    in evaluation; per-sequence batch moments would train the stats head on other inputs."""
    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(["T2WI", "C+A"], ["a", "b"], region_intensity=True,
                            stats_head=True, shared_encoder=True)
    model = MedMAPClassifier(cfg).train()
    items = _cases([0, 1] * 4)
    for i, item in enumerate(items):                 # the sequences' brightness far apart
        item["images"][1] += 5.0 + i % 2
    batch = _collate(items)
    batch["present"][0, 1] = False                   # one pair absent
    norm = model.intensity_norm["shared"]
    before = norm.running_mean.clone()
    with torch.no_grad():
        _, mod, _, got = model.modality_features(
            batch["images"], batch["present"], lesion=LesionGeometry(batch["mask"]))
    raw, present, _ = training_statistics(items, _collate)
    present[0, 1] = False
    rows = torch.as_tensor(np.stack([raw[b, m] for m, b in zip(*present.T.nonzero())]),
                           dtype=torch.float32)                           # (P, 8), by modality
    mean, var = rows.mean(0), rows.var(0, unbiased=False)
    assert torch.allclose(got, (rows - mean) / torch.sqrt(var + norm.eps), atol=1e-4)
    assert torch.allclose(norm.running_mean, 0.9 * before + 0.1 * mean, atol=1e-4)  # one update
    assert got[mod == 1].mean(0).abs().max() > 0.5   # a sequence is not centred on its own


def test_a_one_case_training_batch_uses_the_shared_norms_running_moments():
    """A last training batch of one case: its sequences are not a sample of cases, so the
    shared norm uses (and keeps) its running moments, as a per-sequence norm does with one
    row."""
    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(["T2WI", "C+A"], ["a", "b"], region_intensity=True,
                            stats_head=True, shared_encoder=True)
    model = MedMAPClassifier(cfg).train()
    norm = model.intensity_norm["shared"]
    norm.running_mean.uniform_(), norm.running_var.uniform_(1.0, 2.0)
    before = norm.running_mean.clone(), norm.running_var.clone()
    batch = _collate(_cases([1]))
    with torch.no_grad():
        *_, got = model.modality_features(batch["images"], batch["present"],
                                          lesion=LesionGeometry(batch["mask"]))
    raw, _, _ = training_statistics(_cases([1]), _collate)
    rows = torch.as_tensor(raw[0], dtype=torch.float32)                  # (2, 8)
    assert torch.allclose(got, (rows - before[0]) / torch.sqrt(before[1] + norm.eps), atol=1e-4)
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
