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
    f_t = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 0.0, 0.0]])
    out = medmap_loss(logits, labels, f_fus, f_t, epoch=2, max_epochs=8)
    # BCE on sigmoid probabilities against one-hot targets, mean over B*K entries
    y = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    p = torch.sigmoid(logits)
    bce = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    # KL(P_t || P_fusion) with softmax over feature dims, batch mean
    pt, pf = f_t.softmax(-1), f_fus.softmax(-1)
    kl = (pt * (pt.log() - pf.log())).sum(-1).mean()
    lc, ls = 0.1 * math.exp(-5 * (1 - 2 / 8)), 0.1 * math.exp(-5 * 2 / 8)
    assert out["cls_loss"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert out["kl_loss"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(lc * bce.item() + ls * kl.item(), rel=1e-5)


def test_kl_is_zero_for_identical_features():
    f = torch.randn(3, 5)
    assert kl_alignment(f, f).item() == pytest.approx(0.0, abs=1e-6)
