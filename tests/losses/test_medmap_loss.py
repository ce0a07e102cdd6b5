import math

import pytest
import torch

from medmap.losses.medmap import kl_alignment, medmap_loss, ramp_weights


@pytest.mark.parametrize("t,tmax", [(0, 10), (5, 10), (10, 10), (3, 500)])
def test_ramp_weights_match_paper_formulas(t, tmax):
    lc, ls = ramp_weights(t, tmax)
    assert lc == pytest.approx(0.1 * math.exp(-5 * (1 - t / tmax)))
    assert ls == pytest.approx(0.1 * math.exp(-5 * t / tmax))


def test_ramps_cross_over_midway_and_are_monotone():
    lcs, lss = zip(*[ramp_weights(t, 20) for t in range(21)])
    assert all(a < b for a, b in zip(lcs, lcs[1:])) and all(a > b for a, b in zip(lss, lss[1:]))
    assert lcs[10] == pytest.approx(lss[10])
    with pytest.raises(ValueError):
        ramp_weights(1, 0)


def test_medmap_loss_against_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    labels = torch.tensor([0, 2])
    f_fus = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, -1.0, 0.5]])
    f_t = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.0, 3.0, 0.0, 4.0]])
    out = medmap_loss(logits, labels, f_fus, f_t, epoch=2, max_epochs=8, temperature=0.5)
    # BCE on sigmoid probabilities against one-hot targets, mean over B*K entries
    y = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    p = torch.sigmoid(logits)
    bce = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    # KL(P_t || P_fusion): both L2-normalised, / temperature, softmax over feature dims,
    # batch mean (by hand: row norms, exp, sums)
    tau = 0.5
    nt = f_t / (f_t ** 2).sum(-1, keepdim=True).sqrt()
    nf = f_fus / (f_fus ** 2).sum(-1, keepdim=True).sqrt()
    assert torch.allclose(nt[1], torch.tensor([0.0, 0.6, 0.0, 0.8]))
    pt = (nt / tau).exp() / (nt / tau).exp().sum(-1, keepdim=True)
    pf = (nf / tau).exp() / (nf / tau).exp().sum(-1, keepdim=True)
    kl = (pt * (pt.log() - pf.log())).sum(-1).mean()
    lc, ls = 0.1 * math.exp(-5 * (1 - 2 / 8)), 0.1 * math.exp(-5 * 2 / 8)
    assert out["cls_loss"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert out["kl_loss"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(lc * bce.item() + ls * kl.item(), rel=1e-5)


def test_kl_is_zero_for_identical_features_and_ignores_scale():
    f = torch.randn(3, 5)
    assert kl_alignment(f, f).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_alignment(f, 7.0 * f).item() == pytest.approx(0.0, abs=1e-6)   # L2-normalised
    g = torch.randn(3, 5)
    assert kl_alignment(f, g, 0.05).item() > kl_alignment(f, g, 1.0).item()     # sharper
    with pytest.raises(ValueError, match="temperature"):
        kl_alignment(f, g, 0.0)


def test_kl_target_is_detached_so_it_cannot_chase_a_constant():
    from medmap.models.medmap import MedMAPClassifier, MedMAPConfig

    model = MedMAPClassifier(MedMAPConfig.tiny(["T2WI"], ["a", "b"]), torch.randn(1, 2, 32))
    out = model(torch.randn(2, 1, 1, 32, 32, 32), torch.ones(2, 1, dtype=torch.bool),
                text=torch.randn(2, 32))
    assert not out["text_features"].requires_grad     # the KL term never moves the text side
    kl_alignment(out["text_features"], out["fusion"]).backward()
    assert model.head[1].weight.grad is None and model.norm.weight.grad is not None


def test_cross_entropy_constant_weights_against_hand_computation():
    from medmap.losses.medmap import classification_loss, loss_weights

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    labels = torch.tensor([0, 2])
    f = torch.randn(2, 4)
    out = medmap_loss(logits, labels, f, f, epoch=0, max_epochs=8, cls_loss="ce",
                      weighting="constant", cls_weight=1.0, kl_weight=0.05)
    lsm = logits.log_softmax(-1)
    ce = -(lsm[0, 0] + lsm[1, 2]) / 2
    assert out["cls_loss"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert out["lambda_c"].item() == 1.0 and out["lambda_s"].item() == pytest.approx(0.05)
    # the same weights at every epoch; the paper's ramps with their peaks otherwise
    assert loss_weights(7, 8, "constant", 1.0, 0.05) == (1.0, 0.05)
    assert loss_weights(2, 8, "ramp", 0.1, 0.1) == ramp_weights(2, 8)
    # class weights: a case of a rare class counts more (weighted mean over the batch)
    w = torch.tensor([1.0, 1.0, 3.0])
    per = -torch.stack([lsm[0, 0], lsm[1, 2]])
    expect = (per[0] * 1 + per[1] * 3) / 4
    assert classification_loss(logits, labels, "ce", class_weights=w).item() == \
        pytest.approx(expect.item(), rel=1e-6)
    with pytest.raises(ValueError, match="'bce' or 'ce'"):
        classification_loss(logits, labels, "hinge")
    with pytest.raises(ValueError, match="'ramp' or 'constant'"):
        loss_weights(0, 8, "cosine")
