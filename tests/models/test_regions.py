"""Mask-guided pooling: region masks by hand, region means by hand, mask pooling inside /
outside the lesion, and a classifier whose prediction depends on where the mask lies."""

import numpy as np
import pytest
import torch

from medmap.models.medmap import MedMAPClassifier, MedMAPConfig, _mask_pool
from medmap.models.regions import (SHAPE_STATS, LesionGeometry, lesion_regions, region_pool,
                                   region_stats, region_stats_per_channel, shape_stats,
                                   token_weights)


def _cube_mask(lo=8, hi=24, n=32):
    m = torch.zeros(1, 1, n, n, n)
    m[:, :, lo:hi, lo:hi, lo:hi] = 1
    return m


def test_lesion_regions_of_a_cube():
    r = lesion_regions(_cube_mask(), rim=2, shell=3)             # 16^3 lesion
    sizes = r[0].flatten(1).sum(1).tolist()
    assert sizes == [16 ** 3, 12 ** 3, 16 ** 3 - 12 ** 3, 22 ** 3 - 16 ** 3]
    lesion, core, rim, shell = r[0]
    assert not (core * rim).any() and torch.equal(core + rim, lesion)
    assert not (shell * lesion).any()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dilation_is_scipys_cube_dilation_up_to_the_volume_edges(k):
    from scipy import ndimage

    from medmap.models.regions import _dilate

    g = torch.Generator().manual_seed(k)
    m = (torch.rand(2, 1, 9, 11, 13, generator=g) > 0.93).float()
    m[0, 0, 0, 0, 0] = m[1, 0, -1, -1, -1] = 1                   # voxels on the edges
    want = [ndimage.binary_dilation(v[0].numpy(), np.ones((2 * k + 1,) * 3), border_value=0)
            for v in m]
    assert torch.equal(_dilate(m, k), torch.from_numpy(np.stack(want)[:, None]).float())


def test_tiny_lesion_falls_back_to_the_lesion():
    r = lesion_regions(_cube_mask(15, 17), rim=2, shell=3)        # 2^3: no core after erosion
    assert torch.equal(r[0, 1], r[0, 0]) and torch.equal(r[0, 2], r[0, 0])


def test_region_pool_is_the_mean_inside_each_region():
    regions = lesion_regions(_cube_mask())
    fmap = torch.zeros(1, 2, 32, 32, 32)
    fmap[:, 0][_cube_mask()[:, 0] > 0] = 3.0                      # channel 0: 3 in the lesion
    fmap[:, 1] = 1.0                                              # channel 1: 1 everywhere
    out = region_pool(fmap, regions)                              # (1, 4, 2)
    assert out[0, :, 1].tolist() == pytest.approx([1.0] * 4)
    assert out[0, :3, 0].tolist() == pytest.approx([3.0] * 3) and out[0, 3, 0].item() == 0.0
    # on a coarser grid each cell is weighted by the region's share of it
    coarse = torch.nn.functional.avg_pool3d(fmap, 4)              # (1, 2, 8, 8, 8)
    assert region_pool(coarse, regions)[0, 0, 0].item() == pytest.approx(3.0)


def test_mask_pooling_separates_inside_from_outside():
    tokens = torch.tensor([[[1.0], [1.0], [5.0], [5.0]]])         # (1, 4 tokens, 1)
    w = torch.tensor([[0.0, 0.0, 1.0, 0.5]])
    out = _mask_pool(tokens, w)
    assert out[0].tolist() == pytest.approx([5.0, (1 + 1 + 2.5) / 2.5])
    assert token_weights(_cube_mask(0, 16), 8).tolist() == [[1.0] + [0.0] * 7]


def test_region_stats_are_the_mean_and_sd_inside_each_region():
    regions = lesion_regions(_cube_mask())
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, 1, 32, 32, 32, generator=g) * 0.5 + 2.0
    out = region_stats(img, regions)                              # (1, 8): 4 means, 4 sds
    for r in range(4):
        vals = img[0, 0][regions[0, r] > 0].double()
        assert out[0, r].item() == pytest.approx(vals.mean().item(), rel=1e-4)
        assert out[0, 4 + r].item() == pytest.approx(vals.std(unbiased=False).item(), rel=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):            # fp32 inside autocast
        assert torch.allclose(region_stats(img, regions), out)
    # every sequence of a case in one pass: the same as one call per sequence
    img2 = torch.cat([img, img.flip(2) * 3.0 - 1.0], dim=1)      # (1, 2, D, H, W)
    both = region_stats_per_channel(img2, regions)                # (1, 2, 8)
    assert both.shape == (1, 2, 8)
    for c in range(2):
        assert torch.allclose(both[:, c], region_stats(img2[:, c:c + 1], regions), atol=1e-5)


def test_shape_stats_of_a_box_and_of_two_boxes_by_hand():
    m = torch.zeros(2, 1, 32, 32, 32)
    m[0, :, 8:24, 8:24, 12:20] = 1                                  # one 16 x 16 x 8 box
    m[1, :, 2:6, 2:6, 2:6] = 1                                      # two 4^3 cubes, apart
    m[1, :, 26:30, 26:30, 26:30] = 1
    r = lesion_regions(m, rim=2, shell=3)
    out = shape_stats(r)                                            # (2, 8)
    assert out.shape == (2, len(SHAPE_STATS)) and not out.requires_grad
    n = 32 ** 3
    sizes = r.flatten(2).sum(-1)                                    # voxels per region
    assert torch.allclose(out[:, :4], (sizes / n).log())
    assert out[0, 4:].tolist() == pytest.approx([0.5, 0.5, 0.25, 1.0])
    # two small lesions at opposite corners: their box spans 28 of 32 voxels on every axis
    # and they fill 2 * 64 of its 28^3 voxels
    assert out[1, 4:7].tolist() == pytest.approx([28 / 32] * 3)
    assert out[1, 7].item() == pytest.approx(128 / 28 ** 3)
    # an empty mask gives finite values
    assert torch.isfinite(shape_stats(lesion_regions(torch.zeros(1, 1, 8, 8, 8)))).all()


def test_region_shape_sees_the_lesion_size_that_the_crop_hides():
    """Two cases with identical images and lesions of different size: the shape features tell
    them apart; the control, the same model without them, reads no mask and cannot."""
    x = torch.randn(1, 1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    x = x.expand(2, -1, -1, -1, -1, -1)
    masks = torch.cat([_cube_mask(4, 28), _cube_mask(12, 20)])     # a large and a small lesion
    present = torch.ones(2, 1, dtype=torch.bool)
    feats = LesionGeometry(masks).shape_features
    assert feats[0, 0] > feats[1, 0]                               # the larger lesion's share
    logits = {}
    for on in (True, False):
        torch.manual_seed(0)
        model = MedMAPClassifier(MedMAPConfig.tiny(["T2WI"], ["a", "b"], region_shape=on)).eval()
        assert model.needs_mask == on and hasattr(model, "shape_norm") == on
        logits[on] = model(x, present, lesion_mask=masks)["logits"]
    assert not torch.allclose(logits[True][0], logits[True][1])
    assert torch.allclose(logits[False][0], logits[False][1])


def test_region_shape_standardises_each_case_once_per_step():
    """The shape features are one row per case: in training their batch norm sees each case
    with any sequence once (batch moments over cases, one running-estimate update per step),
    not once per sequence on the cases that have it."""
    torch.manual_seed(0)
    model = MedMAPClassifier(MedMAPConfig.tiny(["T2WI", "C+A"], ["a", "b"],
                                               region_shape=True)).train()
    masks = torch.cat([_cube_mask(4, 28), _cube_mask(12, 20), _cube_mask(8, 16)])
    present = torch.tensor([[True, True], [True, False], [False, True]])
    seen = []
    model.shape_norm.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    with torch.no_grad():
        model(torch.randn(3, 2, 1, 32, 32, 32), present, lesion_mask=masks)
    per_case = LesionGeometry(masks).shape_features                    # (3, 8)
    assert len(seen) == 1 and torch.allclose(seen[0], per_case)
    assert torch.allclose(model.shape_norm.running_mean, 0.1 * per_case.mean(0), atol=1e-6)


def test_stats_head_adds_a_linear_model_on_the_slotted_statistics():
    """stats_head: the logits are the deep head's plus a linear map of every modality's
    standardised region statistics in its own slot (zeros where absent), computed here by hand;
    zero-initialised, so training starts from the deep head's logits."""
    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(["T2WI", "C+A"], ["a", "b", "c"], region_intensity=True,
                            stats_head=True)
    model = MedMAPClassifier(cfg).eval()
    assert not model.stats_head.weight.any() and not model.stats_head.bias.any()
    x = torch.randn(3, 2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    present = torch.tensor([[True, True], [True, False], [False, True]])
    mask = _cube_mask().expand(3, -1, -1, -1, -1)
    base = model(x, present, lesion_mask=mask)["logits"]
    with torch.no_grad():
        model.stats_head.weight.normal_(generator=torch.Generator().manual_seed(2))
        model.stats_head.bias.fill_(0.5)
    out = model(x, present, lesion_mask=mask)["logits"]
    regions = lesion_regions(_cube_mask())
    slots = torch.zeros(3, 2, 8)
    for m, name in enumerate(cfg.modalities):
        for b in range(3):
            if present[b, m]:
                raw = region_stats(x[b:b + 1, m], regions)                # (1, 8)
                slots[b, m] = model.intensity_norm[name](raw)[0]          # eval: running stats
    expected = base + slots.flatten(1) @ model.stats_head.weight.T + 0.5
    assert torch.allclose(out, expected, atol=1e-4)
    with pytest.raises(ValueError, match="region_intensity: true too, or model.stats_head: false"):
        MedMAPClassifier(MedMAPConfig.tiny(["T2WI"], ["a", "b"], stats_head=True))


def test_stats_head_without_region_intensity_is_refused_when_the_config_loads(tmp_path):
    """The error comes from loading the config, before any data is read or model built."""
    from medmap.config import ConfigError, load_config
    from medmap.train.config import ExperimentConfig

    path = tmp_path / "c.yaml"
    path.write_text("model: {region_intensity: true, stats_head: true}\n")
    assert load_config(ExperimentConfig, path, []).model.stats_head
    with pytest.raises(ConfigError, match="or model.stats_head: false"):
        load_config(ExperimentConfig, path, ["model.region_intensity=false"])


def test_region_intensity_trains_with_one_case_of_a_modality():
    cfg = MedMAPConfig.tiny(["T2WI", "C+A"], ["a", "b"], region_intensity=True)
    model = MedMAPClassifier(cfg).train()
    x = torch.randn(2, 2, 1, 32, 32, 32)
    p = torch.tensor([[True, True], [True, False]])               # C+A: one case
    out = model(x, p, lesion_mask=_cube_mask().expand(2, -1, -1, -1, -1))["logits"]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kw", [dict(pooling="mask"), dict(region_scales=[0, 1]),
                                dict(mask_channel=True), dict(region_intensity=True),
                                dict(region_shape=True),
                                dict(region_intensity=True, stats_head=True)])
def test_mask_reading_models_use_the_mask_and_get_every_gradient(kw):
    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(["T2WI", "C+A"], ["a", "b"], **kw)
    model = MedMAPClassifier(cfg).eval()
    assert model.needs_mask
    x, p = torch.randn(2, 2, 1, 32, 32, 32), torch.ones(2, 2, dtype=torch.bool)
    a = model(x, p, lesion_mask=_cube_mask().expand(2, -1, -1, -1, -1))["logits"]
    b = model(x, p, lesion_mask=_cube_mask(0, 12).expand(2, -1, -1, -1, -1))["logits"]
    assert not torch.allclose(a, b)                   # the mask changes the prediction
    model.train()
    model(x, p, lesion_mask=_cube_mask().expand(2, -1, -1, -1, -1))["logits"].sum().backward()
    assert not [n for n, q in model.named_parameters() if q.grad is None]
    with pytest.raises(ValueError, match="lesion_mask"):
        model(x, p)


def test_region_scales_are_checked():
    with pytest.raises(ValueError, match="region_scales"):
        MedMAPClassifier(MedMAPConfig.tiny(["T2WI"], ["a", "b"], region_scales=[9]))


def test_lesion_geometry_shares_work_and_gives_the_per_row_values():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(3, 1, 16, 16, 16, generator=g) > 0.6).float()
    geo = LesionGeometry(mask)
    rows = torch.tensor([0, 2])
    sub = geo.rows(rows)
    assert torch.equal(sub.mask, mask[rows])
    assert torch.equal(sub.regions, lesion_regions(mask[rows]))
    assert torch.equal(sub.token_weights(64), token_weights(mask[rows], 64))
    fmap = torch.randn(2, 5, 8, 8, 8, generator=g)
    assert torch.equal(region_pool(fmap, weights=sub.region_weights((8, 8, 8), fmap.dtype)),
                       region_pool(fmap, lesion_regions(mask[rows])))
    every = geo.rows(torch.arange(3))                             # all rows: the batch itself
    assert every.mask is mask
    n = len(geo._shared)
    geo.rows(torch.tensor([1])).token_weights(64)                 # computed once, reused
    assert len(geo._shared) == n
