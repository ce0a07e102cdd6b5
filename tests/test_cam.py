"""Grad-CAM per modality (MONAI GradCAM on the expert feature maps) and localisation metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmap.cam import (
    aggregate_localisation,
    cam_auc,
    gradcam,
    localisation,
    normalise_cam,
    pointing_game,
)
from medmap.models.encoders import Encoder3D
from medmap.models.medmap import MedMAPClassifier, MedMAPConfig

MODS = ["T2WI", "C+A"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(MODS, ["a", "b", "c"])
    return MedMAPClassifier(cfg, torch.randn(2, 3, cfg.text_dim)).eval()


def test_shapes_range_and_absent_rows(model):
    torch.manual_seed(1)
    x = torch.randn(3, 2, 1, 32, 32, 32)
    present = torch.tensor([[True, True], [True, False], [False, True]])
    cams = gradcam(model, x, present)
    assert set(cams) == set(MODS)
    for name, c in cams.items():
        assert c.shape == (3, 32, 32, 32) and c.dtype == torch.float32
        assert float(c.min()) >= 0.0 and float(c.max()) <= 1.0
    assert not cams["C+A"][1].any() and not cams["T2WI"][2].any()    # modality absent there
    # the model is left as it was: eval mode, no gradients, no patched methods
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert "encode" not in vars(model.experts)
    assert all("feature_map" not in vars(e) for e in model.experts.encoders.values())


def test_cam_needs_no_weight_gradient_and_leaves_the_weights_trainable():
    """Backward stops at the taps (the weights are frozen for the call): the same maps as with
    weight gradients computed, and every weight that was trainable is trainable again."""
    torch.manual_seed(2)
    cfg = MedMAPConfig.tiny(MODS, ["a", "b", "c"])
    m = MedMAPClassifier(cfg, torch.randn(2, 3, cfg.text_dim)).eval()
    m.head[1].weight.requires_grad_(False)                     # one frozen by its user
    x = torch.randn(2, 2, 1, 32, 32, 32)
    present = torch.ones(2, 2, dtype=torch.bool)
    seen = []
    hook = torch.nn.modules.module.register_module_full_backward_hook(
        lambda mod, gi, go: seen.append(any(p.requires_grad for p in mod.parameters(False))))
    try:
        cams = gradcam(m, x, present)
    finally:
        hook.remove()
    assert seen and not any(seen)                  # no module's weights took part in backward
    assert [p.requires_grad for p in m.parameters()].count(False) == 1
    assert not m.head[1].weight.requires_grad and all(p.grad is None for p in m.parameters())
    # against the maps with every weight's gradient computed (the gradient at a tap is the same)
    import medmap.cam as cam_mod

    full = {}
    grads_on = [p for p in m.parameters() if p.requires_grad]
    net = cam_mod._TappedModel(m, MODS)
    hooked = cam_mod._hooks_cls()(net, [f"taps.{n}" for n in MODS], register_forward=True,
                                  register_backward=True)
    with torch.enable_grad():
        idx = m(x, present)["logits"].argmax(1)
        _, actis, grads = hooked(x, class_idx=idx, present=present)
    assert any(p.grad is not None for p in grads_on)           # weights did get gradients here
    for name, a, g in zip(MODS, actis, grads):
        w = g.float().flatten(2).mean(2)[..., None, None, None]
        c = F.relu((w * a.float()).sum(1, keepdim=True))
        c = F.interpolate(c, size=(32, 32, 32), mode="trilinear", align_corners=False)
        full[name] = normalise_cam(c[:, 0]).detach()
        assert torch.allclose(full[name], cams[name], atol=1e-6), name
    m.zero_grad(set_to_none=True)


def test_modality_absent_everywhere_is_omitted(model):
    x = torch.randn(2, 2, 1, 32, 32, 32)
    cams = gradcam(model, x, torch.tensor([[True, False], [True, False]]))
    assert list(cams) == ["T2WI"]


def test_cam_depends_on_input_and_class(model):
    torch.manual_seed(2)
    x = torch.randn(2, 2, 1, 32, 32, 32)
    present = torch.ones(2, 2, dtype=torch.bool)
    a = gradcam(model, x, present, class_index=0)["T2WI"]
    b = gradcam(model, x, present, class_index=[1, 2])["T2WI"]
    assert not torch.allclose(a[0], a[1])              # different volumes, different maps
    assert not torch.allclose(a, b)                    # different classes, different maps
    # per-case class indices: row 1 of the mixed call equals the single-class call for class 2
    c = gradcam(model, x[1:], present[1:], class_index=2)["T2WI"]
    assert torch.allclose(b[1], c[0], atol=1e-5)
    with pytest.raises(ValueError, match="one index per case"):
        gradcam(model, x, present, class_index=[0, 1, 2])


class RegionEncoder(Encoder3D):
    """Toy expert: features exist only in one corner of the volume (8^3 map, corner 3^3)."""

    min_multiple = 4

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.scale = nn.Parameter(torch.ones(out_dim))
        region = torch.zeros(8, 8, 8)
        region[:3, :3, :3] = 1.0
        self.register_buffer("region", region)

    def feature_map(self, x):
        pooled = F.avg_pool3d(x.abs() + 1.0, 4)                        # (B, 1, 8, 8, 8) > 0
        return pooled * self.region * self.scale.view(1, -1, 1, 1, 1)  # (B, C, 8, 8, 8)


def test_cam_peaks_in_the_only_region_that_matters():
    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(["T2WI"], ["a", "b"])
    model = MedMAPClassifier(cfg, torch.randn(1, 2, cfg.text_dim)).eval()
    width = model.experts.proj["T2WI"].in_features
    model.experts.encoders["T2WI"] = RegionEncoder(width)
    with torch.no_grad():                     # logit_b = -logit_a: one class has positive weights
        head = model.head[1]
        head.weight[1] = -head.weight[0]
        head.bias[1] = -head.bias[0]
    x = torch.rand(1, 1, 1, 32, 32, 32)
    present = torch.ones(1, 1, dtype=torch.bool)
    maps = [gradcam(model, x, present, class_index=k)["T2WI"][0] for k in (0, 1)]
    active = [m for m in maps if float(m.max()) > 0]
    assert len(active) >= 1
    mask = torch.zeros(32, 32, 32)
    mask[:12, :12, :12] = 1                    # the corner region at input resolution
    for m in active:
        peak = np.unravel_index(int(m.argmax()), m.shape)
        assert all(p < 12 for p in peak), peak
        assert pointing_game(m, mask) == 1.0
        near = torch.zeros(32, 32, 32)
        near[:14, :14, :14] = 1                # + trilinear spill-over of half a feature cell
        assert float(m[near == 0].max()) == 0.0
        assert cam_auc(m, mask) > 0.95


def test_pointing_game_and_cam_auc_hand_made():
    mask = np.zeros((8, 8, 8))
    mask[2:4, 2:4, 2:4] = 1
    cam = mask.copy()
    assert pointing_game(cam, mask) == 1.0
    assert cam_auc(cam, mask) == pytest.approx(1.0)
    assert cam_auc(1 - cam, mask) == pytest.approx(0.0)
    assert cam_auc(np.full_like(cam, 0.3), mask) == pytest.approx(0.5)
    off = np.zeros_like(cam)
    off[6, 6, 6] = 1.0
    assert pointing_game(off, mask) == 0.0
    assert pointing_game(np.zeros_like(cam), mask) == 0.0          # a flat CAM points nowhere
    assert pointing_game(cam, np.zeros_like(mask)) is None          # no lesion: undefined
    assert cam_auc(cam, np.zeros_like(mask)) is None
    assert localisation(torch.as_tensor(cam), torch.as_tensor(mask)) == {
        "pointing_hit": 1.0, "cam_auc": pytest.approx(1.0), "lesion_fraction": 8 / 512}
    assert localisation(cam, np.zeros_like(mask))["lesion_fraction"] is None
    with pytest.raises(ValueError, match="sizes differ"):
        pointing_game(cam, mask[:4])


def test_pointing_game_uses_the_centre_of_a_plateau_maximum():
    # a 2^3 CAM upsampled to 32^3 (as MONAI's Grad-CAM does): the maximum is a whole block
    coarse = torch.tensor([[[[[0.2, 0.1], [0.1, 0.1]], [[0.1, 0.1], [0.1, 1.0]]]]])
    cam = torch.nn.functional.interpolate(coarse, size=(32, 32, 32), mode="trilinear",
                                          align_corners=False)[0, 0]
    assert int(cam.argmax()) == np.ravel_multi_index((24, 24, 24), (32,) * 3)  # block corner
    mask = torch.zeros(32, 32, 32)
    mask[26:31, 26:31, 26:31] = 1              # a lesion in the middle of the hot block
    assert float(mask.reshape(-1)[int(cam.argmax())]) == 0.0   # the first argmax misses it
    assert pointing_game(cam, mask) == 1.0
    other = torch.zeros(32, 32, 32)
    other[2:6, 2:6, 2:6] = 1                   # a lesion in the cold corner
    assert pointing_game(cam, other) == 0.0


def test_aggregate_localisation():
    recs = [{"case_id": "a", "modality": "T2WI", "pointing_hit": 1.0, "cam_auc": 0.9,
             "lesion_fraction": 0.1},
            {"case_id": "b", "modality": "T2WI", "pointing_hit": 0.0, "cam_auc": 0.5,
             "lesion_fraction": 0.3},
            {"case_id": "a", "modality": "C+A", "pointing_hit": None, "cam_auc": None}]
    agg = aggregate_localisation(recs)
    assert agg["per_modality"]["T2WI"] == {"n": 2, "pointing_game": 0.5, "cam_auc": 0.7,
                                           "pointing_chance": pytest.approx(0.2)}
    assert agg["per_modality"]["C+A"] == {"n": 1, "pointing_game": None, "cam_auc": None,
                                          "pointing_chance": None}
    assert agg["overall"]["n"] == 3 and agg["overall"]["cam_auc"] == pytest.approx(0.7)


def test_normalise_cam():
    x = torch.stack([torch.arange(8.0).view(2, 2, 2), torch.full((2, 2, 2), 3.0)])
    y = normalise_cam(x)
    assert float(y[0].min()) == 0.0 and float(y[0].max()) == 1.0
    assert not y[1].any()
