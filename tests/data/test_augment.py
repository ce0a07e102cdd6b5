"""Training-batch augmentation: one draw per case across its sequences, reproducible from
torch's RNG, missing sequences kept at zero, off by default."""

from __future__ import annotations

import pytest
import torch

from medmap.data.augment import AugmentConfig, BatchAugmenter


def _batch(B=4, M=3, S=8):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(B, 1, 1, S, S, S, generator=g)
    images = base.repeat(1, M, 1, 1, 1, 1) * torch.arange(1, M + 1).view(1, M, 1, 1, 1, 1)
    present = torch.ones(B, M, dtype=torch.bool)
    present[1, 2] = False
    images[1, 2] = 0
    return images, present


def test_one_flip_per_case_shared_by_its_sequences():
    images, present = _batch()
    aug = BatchAugmenter(AugmentConfig(flip_prob=0.5))
    torch.manual_seed(3)
    out = aug.cases(images, present)
    assert out.shape == images.shape
    flipped_any = False
    for b in range(images.shape[0]):
        # sequence m is (m+1) x sequence 0 before augmentation: a shared flip keeps that
        for m in range(3):
            if present[b, m]:
                assert torch.allclose(out[b, m], out[b, 0] * (m + 1), atol=1e-5)
        flipped_any |= not torch.equal(out[b, 0], images[b, 0])
        # a flip only permutes voxels
        assert torch.allclose(out[b, 0].flatten().sort().values,
                              images[b, 0].flatten().sort().values)
    assert flipped_any
    assert (out[1, 2] == 0).all()                                 # missing stays missing


def test_reproducible_from_torch_seed_and_intensity_range():
    images, present = _batch()
    aug = BatchAugmenter(AugmentConfig(flip_prob=0.5, intensity_scale=0.2, intensity_shift=0.1))
    torch.manual_seed(7)
    a = aug.cases(images, present)
    torch.manual_seed(7)
    b = aug.cases(images, present)
    torch.manual_seed(8)
    c = aug.cases(images, present)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # scale in [0.8, 1.2] and shift in [-0.1, 0.1]: the std ratio of sequence 0 stays in range
    for i in range(images.shape[0]):
        r = a[i, 0].std() / images[i, 0].std()
        assert 0.8 - 1e-4 <= r.item() <= 1.2 + 1e-4


def test_volumes_and_off_by_default_and_validation():
    x = torch.randn(3, 1, 8, 8, 8)
    off = BatchAugmenter(AugmentConfig())
    assert off.volumes(x) is x and off.cases(x[:, None]) is not None
    torch.manual_seed(0)
    y = BatchAugmenter(AugmentConfig(flip_prob=1.0)).volumes(x)
    assert torch.equal(y, x.flip(2, 3, 4))                         # every axis flipped
    with pytest.raises(ValueError, match="flip_prob must be in"):
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match="intensity_scale must be >= 0"):
        AugmentConfig(intensity_scale=-0.1)


def test_the_mask_takes_the_case_flips_but_not_the_intensity_change():
    import torch

    from medmap.data.augment import AugmentConfig, BatchAugmenter

    aug = BatchAugmenter(AugmentConfig(flip_prob=0.5, intensity_scale=0.3, intensity_shift=0.3))
    images = torch.zeros(4, 2, 1, 8, 8, 8)
    images[:, :, :, :2, :3, :4] = 1.0                 # a bright corner block in both sequences
    mask = (images[:, :1, 0] > 0).float()             # (4, 1, 8, 8, 8): the same block
    present = torch.ones(4, 2, dtype=torch.bool)
    flipped = 0
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        out, m = aug.cases_with_mask(images, present, mask, g)
        assert set(m.unique().tolist()) <= {0.0, 1.0}            # never rescaled
        for b in range(4):
            bright = out[b, 0, 0] > out[b, 0, 0].median()
            assert torch.equal(bright, m[b, 0] > 0)             # still on the same voxels
            flipped += int(not torch.equal(m[b], mask[b]))
    assert flipped > 0


def test_modality_drop_hides_sequences_but_never_a_whole_case():
    aug = BatchAugmenter(AugmentConfig(modality_drop=0.6))
    present = torch.ones(64, 8, dtype=torch.bool)
    present[:, 5:] = False                                  # three sequences never acquired
    g = torch.Generator().manual_seed(0)
    kept = aug.drop_modalities(present, g)
    assert kept.any(1).all()                                # every case keeps one sequence
    assert not (kept & ~present).any()                      # never turns an absent one on
    frac = kept[:, :5].float().mean().item()
    assert 0.3 < frac < 0.6                                 # about 1 - 0.6, plus the rescues
    again = aug.drop_modalities(present, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)                         # reproducible from the generator
    off = BatchAugmenter(AugmentConfig(flip_prob=0.5))
    assert off.drop_modalities(present) is present          # off by default
    with pytest.raises(ValueError, match="modality_drop must be in"):
        AugmentConfig(modality_drop=1.0)


def test_sequence_dropout_alone_leaves_the_voxels_untouched():
    images, present = _batch()
    aug = BatchAugmenter(AugmentConfig(modality_drop=0.5))
    assert aug.cfg.enabled and not aug.cfg.volume_ops
    assert aug.cases(images, present) is images
    mask = torch.zeros(images.shape[0], 1, *images.shape[3:])
    out, m = aug.cases_with_mask(images, present, mask)
    assert out is images and m is mask


def test_rotate90_turns_volumes_and_mask_together_in_the_axial_plane():
    aug = BatchAugmenter(AugmentConfig(rotate90_prob=1.0))
    images = torch.zeros(4, 2, 1, 8, 8, 8)
    images[:, :, :, :2, :3, :4] = 1.0                 # an asymmetric corner block
    mask = (images[:, :1, 0] > 0).float()
    out, m = aug.cases_with_mask(images, torch.ones(4, 2, dtype=torch.bool), mask,
                                 torch.Generator().manual_seed(0))
    turns = {k: torch.rot90(mask[0, 0], k, dims=(0, 1)) for k in (1, 2, 3)}
    for b in range(4):
        assert torch.equal(out[b, 0, 0] > 0, m[b, 0] > 0)          # mask follows the volume
        assert torch.equal(out[b, 1], out[b, 0])                   # one draw per case
        # always turned (prob 1) by a quarter, half or three quarters, never along the 3rd axis
        assert any(torch.equal(m[b, 0], t) for t in turns.values())
        assert (m[b, 0].sum(dim=(0, 1)) == mask[b, 0].sum(dim=(0, 1))).all()
    with pytest.raises(ValueError, match="rotate90_prob must be in"):
        AugmentConfig(rotate90_prob=-0.1)
