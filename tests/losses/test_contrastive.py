import math

import numpy as np
import torch
import torch.nn.functional as F

from medmap.losses.contrastive import clip_loss, modality_contrastive_loss


def _hand_clip(v: np.ndarray, t: np.ndarray, scale: float) -> float:
    logits = scale * v @ t.T
    n = len(v)

    def ce(rows):
        return float(np.mean([-rows[i, i] + math.log(np.exp(rows[i]).sum()) for i in range(n)]))

    return 0.5 * (ce(logits) + ce(logits.T))


def test_clip_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    t = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    got = clip_loss(v, t, torch.tensor(7.0)).item()
    assert abs(got - _hand_clip(v.numpy(), t.numpy(), 7.0)) < 1e-5


def test_loss_is_computed_within_each_modality():
    g = torch.Generator().manual_seed(1)
    v = F.normalize(torch.randn(7, 6, generator=g), dim=-1)
    t = F.normalize(torch.randn(7, 6, generator=g), dim=-1)
    mod = torch.tensor([0, 1, 0, 1, 0, 2, 1])  # modality 2 has a single pair: no negatives
    out = modality_contrastive_loss(v, t, mod, torch.tensor(10.0))
    a = _hand_clip(v[[0, 2, 4]].numpy(), t[[0, 2, 4]].numpy(), 10.0)
    b = _hand_clip(v[[1, 3, 6]].numpy(), t[[1, 3, 6]].numpy(), 10.0)
    assert set(out["per_modality"]) == {0, 1}
    assert abs(out["per_modality"][0].item() - a) < 1e-5
    assert abs(out["contrastive_loss"].item() - (a + b) / 2) < 1e-5


def test_perfectly_aligned_pairs_give_low_loss_and_full_retrieval():
    e = torch.eye(4)
    out = modality_contrastive_loss(e, e, torch.zeros(4, dtype=torch.long), torch.tensor(100.0))
    assert out["contrastive_loss"].item() < 1e-6
    assert out["v2t_correct"].item() == 4


def test_no_valid_group_gives_zero_with_graph():
    v = F.normalize(torch.randn(2, 4), dim=-1).requires_grad_()
    out = modality_contrastive_loss(v, v.detach(), torch.tensor([0, 1]), torch.tensor(1.0))
    assert out["contrastive_loss"].item() == 0.0
    out["contrastive_loss"].backward()  # differentiable even when empty
