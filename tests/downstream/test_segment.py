"""Segmentation: the SwinUNETR decoder on Swin, CNN and ResNet experts, a short run on tiny
data, masks in the input's space."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch


@pytest.mark.parametrize("out_stage,size", [(3, 32), (4, 64)])
def test_decoder_restores_full_resolution(out_stage, size):
    from medmap.downstream.segment import SegmenterConfig, SwinUNETRSegmenter
    from medmap.models.encoders import tiny_encoder_config

    enc = tiny_encoder_config("swin")
    enc.out_stage = out_stage
    seg = SwinUNETRSegmenter(SegmenterConfig(encoder=enc, modality="T2WI"))
    assert len(seg.ups) == out_stage
    with torch.no_grad():   # stage 4 of a 32^3 input is 1 voxel: instance norm needs 64^3
        assert seg(torch.randn(1, 1, size, size, size)).shape == (1, 2, size, size, size)


@pytest.mark.parametrize("name,size", [("cnn", 32), ("resnet", 64)])
def test_decoder_on_cnn_and_resnet_experts(name, size):
    """Every encoder gives the decoder its multi-scale maps (the demo's experts are CNNs)."""
    from medmap.downstream.segment import SegmenterConfig, SwinUNETRSegmenter
    from medmap.models.encoders import tiny_encoder_config

    seg = SwinUNETRSegmenter(SegmenterConfig(encoder=tiny_encoder_config(name)))
    x = torch.randn(1, 1, size, size, size)   # a ResNet's last map is 1/32: instance norm
    maps = seg.encoder.feature_maps(x)        # needs more than one voxel there
    assert [m.shape[1] for m in maps] == seg.encoder.feature_channels
    assert [size // m.shape[-1] for m in maps] == seg.encoder.feature_strides
    out = seg(x)
    assert out.shape == (1, 2, size, size, size)
    out.sum().backward()                               # gradient reaches every parameter
    assert all(p.grad is not None for p in seg.parameters() if p.requires_grad)


def test_swin_strides_match_its_maps():
    from medmap.models.encoders import build_encoder, tiny_encoder_config

    enc = build_encoder(tiny_encoder_config("swin"))
    maps = enc.feature_maps(torch.randn(1, 1, 32, 32, 32))
    assert [32 // m.shape[-1] for m in maps] == enc.feature_strides


def test_segment_runs_and_writes_masks_in_the_input_space(vlm, tiny_sim, vcache, tmp_path):
    from medmap.data.manifest import Manifest
    from medmap.downstream.segment import load_segmenter, segment

    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    res = segment(vlm, tiny_sim, tmp_path, epochs=1, eval_split="val", cache_dir=vcache)
    assert res["n_train"] > 0 and res["modality"] == "T2WI"
    assert res["dice"] is None or 0.0 <= res["dice"] <= 1.0
    assert len(res["train_loss"]) == 1 and np.isfinite(res["train_loss"][0])
    assert json.loads((tmp_path / "segment.json").read_text())["modality"] == "T2WI"
    # the caller's pre-trained model is not modified
    assert all(torch.equal(before[k], v) for k, v in vlm.model.state_dict().items())
    cases = {c.case_id: c for c in Manifest.load(tiny_sim).resolved()}
    assert res["masks"]
    for cid, path in res["masks"].items():
        src = nib.load(cases[cid].modalities["T2WI"])
        out = nib.load(path)
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1}
    seg, pp = load_segmenter(tmp_path / "model")
    assert seg.cfg.modality == "T2WI" and tuple(pp.size) == (32, 32, 32)


def test_organ_segmentation_writes_masks_in_the_input_space(vlm, tiny_sim, vcache, tmp_path):
    """``mask="liver"``: the simulator's liver masks; predictions on each input's own grid."""
    from medmap.data.manifest import Manifest
    from medmap.downstream.segment import segment

    res = segment(vlm, tiny_sim, tmp_path, epochs=1, eval_split="val", cache_dir=vcache,
                  mask="liver", modality="C+A")
    assert res["mask"] == "liver" and res["n_train"] > 0 and res["masks"]
    cases = {c.case_id: c for c in Manifest.load(tiny_sim).resolved()}
    for cid, path in res["masks"].items():
        assert path.endswith("liver_pred.nii.gz")
        src, out = nib.load(cases[cid].modalities["C+A"]), nib.load(path)
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)


def test_predicted_mask_keeps_a_non_trivial_affine_and_shape(vlm, tmp_path):
    """An oblique, anisotropic, non-cubic input: the mask comes back on its exact grid."""
    from medmap.downstream.segment import predict_masks, segmenter_from_vlm

    rng = np.random.default_rng(0)
    affine = np.array([[0.0, 1.2, 0.0, -20.0], [-0.9, 0.0, 0.0, 15.0],
                       [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1.0]])
    src = tmp_path / "T2WI.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((40, 36, 20)).astype(np.float32), affine), src)
    seg = segmenter_from_vlm(vlm, "T2WI")
    written = predict_masks(seg, vlm.preprocess, {"c1": str(src)}, tmp_path / "masks")
    out = nib.load(written["c1"])
    assert out.shape == (40, 36, 20)
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
