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


def test_modality_loss_is_cross_entropy_over_present_sequences_only():
    from medmap.losses.medmap import MedMAPLoss, modality_loss

    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [5.0, -5.0]]])   # (B2, M2, K2)
    labels = torch.tensor([0, 1])
    present = torch.tensor([[True, True], [True, False]])
    # present pairs: (0,0) y0, (0,1) y0, (1,0) y1; the absent (1,1) would add a huge loss
    by_hand = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0)), math.log(2.0)]
    assert float(modality_loss(logits, labels, present)) == pytest.approx(sum(by_hand) / 3, rel=1e-5)
    loss = MedMAPLoss(10, cls_loss="ce", weighting="constant", cls_weight=1.0, kl_weight=0.0,
                      modality_weight=0.5)
    fused = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    terms = loss(fused, torch.zeros(2, 4), labels, epoch=0, modality_logits=logits,
                 present=present)
    base = torch.nn.functional.cross_entropy(fused, labels)
    assert float(terms["loss"]) == pytest.approx(float(base) + 0.5 * sum(by_hand) / 3, rel=1e-5)
    plain = MedMAPLoss(10, cls_loss="ce", weighting="constant", cls_weight=1.0, kl_weight=0.0)
    assert "modality_loss" not in plain(fused, torch.zeros(2, 4), labels, epoch=0,
                                        modality_logits=logits, present=present)
