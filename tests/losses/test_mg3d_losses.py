import math

import pytest
import torch
import torch.nn.functional as F

from medmap.losses.mg3d import (MG3DLossConfig, cml_loss, dfa_loss, info_nce, itc_loss, mim_loss,
                                mlm_loss, sfr_loss, ssm_loss, weighted_total)


def test_mim_loss_is_mse_on_masked_voxels_only():
    torch.manual_seed(0)
    target = torch.randn(2, 1, 4, 4, 4)
    pred = torch.randn(2, 1, 4, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, 4, dtype=torch.bool)
    mask[0, 0, :2] = True
    mask[1, 0, 3, 3, 3] = True
    expected = ((pred - target)[mask] ** 2).mean()
    assert torch.allclose(mim_loss(pred, target, mask), expected)
    changed = pred.clone()
    changed[~mask] = 1e3                       # predictions at unmasked voxels do not matter
    assert torch.allclose(mim_loss(changed, target, mask), expected)
    perfect = torch.where(mask, target, pred)
    assert mim_loss(perfect, target, mask).item() == 0.0


def test_mlm_loss_is_cross_entropy_on_masked_positions_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    masked = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    hand = -torch.stack([logits[0, 0].log_softmax(-1)[ids[0, 0]],
                         logits[0, 3].log_softmax(-1)[ids[0, 3]],
                         logits[1, 2].log_softmax(-1)[ids[1, 2]]]).mean()
    assert torch.allclose(mlm_loss(logits, ids, masked), hand)
    other = logits.clone()
    other[~masked] = torch.randn_like(other[~masked]) * 100
    assert torch.allclose(mlm_loss(other, ids, masked), hand)
    ids2 = ids.clone()
    ids2[~masked] = (ids2[~masked] + 1) % 7      # targets at unmasked positions are ignored too
    assert torch.allclose(mlm_loss(logits, ids2, masked), hand)
    none = mlm_loss(logits.requires_grad_(), ids, torch.zeros_like(masked))
    assert none.item() == 0.0 and none.requires_grad


def test_sfr_loss_zero_for_identical_distinct_sentences_and_hand_value():
    orig = torch.eye(4)[None, :3] * torch.tensor([2.0, 1.0, 3.0])[None, :, None]  # (1, 3, 4)
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert sfr_loss(orig.clone(), orig, mask).item() == pytest.approx(0.0, abs=1e-7)
    # a padded sentence is ignored
    pad = torch.cat([orig, torch.randn(1, 1, 4)], 1)
    assert sfr_loss(pad, pad.clone(), torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)).item() == \
        pytest.approx(0.0, abs=1e-7)
    # hand computation: 2 sentences, rec = [e0, e0 + e1]
    o = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    r = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    c = 1 / math.sqrt(2)
    sim = torch.tensor([[1.0, c], [0.0, c]])    # Sim[s, t] = cos(o_s, r_t)
    hand = 0.5 * ((sim - torch.eye(2)) ** 2).mean()
    assert sfr_loss(r, o, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(hand.item())


def test_info_nce_and_cml_match_a_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    p = torch.tensor([[1.0, 0.2], [0.1, 1.0], [-1.0, 0.5]])
    scale = torch.tensor(5.0)
    an, pn = F.normalize(a, dim=-1), F.normalize(p, dim=-1)
    hand = 0.0
    for i in range(3):
        logits = [float(scale) * float(an[i] @ pn[j]) for j in range(3)]
        hand += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    hand /= 3
    assert info_nce(a, p, scale).item() == pytest.approx(hand, rel=1e-5)
    t2i, i2t = cml_loss(a, p, p, a, scale)
    assert t2i.item() == pytest.approx(hand, rel=1e-5)
    assert i2t.item() == pytest.approx(info_nce(p, a, scale).item(), rel=1e-5)
    assert dfa_loss(a, p, scale).item() == pytest.approx(hand, rel=1e-5)
    assert itc_loss(a, p, scale).item() == pytest.approx(
        0.5 * (hand + info_nce(p, a, scale).item()), rel=1e-5)
    # invariant to the features' norms (cosine similarities)
    assert info_nce(3 * a, 0.5 * p, scale).item() == pytest.approx(hand, rel=1e-5)


def test_ssm_loss_zero_when_similarity_matrices_agree_and_hand_value():
    torch.manual_seed(0)
    f = torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    h = 2.5 * f @ q                         # rotation + scale: the same cosine similarities
    assert ssm_loss(h, f, mask).item() == pytest.approx(0.0, abs=1e-5)
    # different widths are fine (the text features need not share the visual width)
    h2 = torch.cat([h, torch.zeros(3, 4, 5)], -1)
    assert ssm_loss(h2, f, mask).item() == pytest.approx(0.0, abs=1e-5)
    # hand: two patients, one sentence each -> |cos(h0, h1) - cos(f0, f1)|
    hh = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    ff = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    assert ssm_loss(hh, ff, torch.ones(2, 1, dtype=torch.bool)).item() == \
        pytest.approx(1 / math.sqrt(2), rel=1e-5)
    # only i<j pairs: padded sentences and the diagonal never matter
    hp = h.clone()
    hp[~mask] = 100.0
    assert ssm_loss(hp, f, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert ssm_loss(h[:1], f[:1], mask[:1]).item() == 0.0


def test_weighted_total_uses_the_paper_groups_and_switches():
    terms = {f"{n}_loss": torch.tensor(1.0) for n in ("mim", "mlm", "sfr", "cml", "ssm", "dfa", "itc")}
    cfg = MG3DLossConfig()
    assert weighted_total(terms, cfg).item() == pytest.approx(2 * 1.0 + 2 * 0.1 + 2 * 0.1 + 0.1)
    cfg = MG3DLossConfig(sfr=False, itc=False, lambda_gamma=0.5)
    assert weighted_total(terms, cfg).item() == pytest.approx(2.0 + 0.1 + 1.0)
    with pytest.raises(ValueError, match="switched off"):
        weighted_total(terms, MG3DLossConfig(**{n: False for n in
                                                ("mim", "mlm", "sfr", "cml", "ssm", "dfa", "itc")}))
