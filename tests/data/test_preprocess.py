"""Preprocessing: geometry, intensity modes, readers, error cases and inversion."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medmap.data.io import VolumeReadError
from medmap.data.preprocess import PreprocessConfig, Preprocessor, foreground_box

S = (16, 16, 16)


def write_nii(path: Path, arr: np.ndarray, affine=None) -> Path:
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    nib.save(nib.Nifti1Image(np.asarray(arr), aff), str(path))
    return path


def ball(shape=(24, 24, 24), center=(12, 11, 13), radius=6.0) -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    d2 = sum((g[i] - center[i]) ** 2 for i in range(3))
    return (d2 < radius**2).astype(np.float32)


def textured(seed=0, shape=(24, 24, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ball(shape) * (100 + 20 * rng.standard_normal(shape)).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


# ---- config ---------------------------------------------------------------------------------
def test_config_roundtrip_and_validation():
    cfg = PreprocessConfig(spacing=[1, 2, 3], size=[8, 8, 8], modality_intensity={"CT": "ct"})
    d = cfg.to_dict()
    assert d["spacing"] == [1.0, 2.0, 3.0] and d["size"] == [8, 8, 8]
    back = PreprocessConfig.from_dict(d)
    assert back == cfg and back.spacing == (1.0, 2.0, 3.0)
    assert PreprocessConfig.from_dict(PreprocessConfig(spacing=None).to_dict()).spacing is None
    assert cfg.intensity_for("CT") == "ct" and cfg.intensity_for("T1WI") == "mri"
    for bad in ({"size_mode": "stretch"}, {"intensity": "pet"}, {"orientation": "RRS"},
                {"percentiles": (99, 1)}, {"hu_window": (5, 5)}, {"size": (8, 8)},
                {"spacing": (0, 1, 1)}, {"modality_intensity": {"CT": "hu"}}):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)
    with pytest.raises(ValueError, match="unknown PreprocessConfig field"):
        PreprocessConfig.from_dict({"sizes": [8, 8, 8]})


# ---- images ---------------------------------------------------------------------------------
def test_output_shape_dtype_and_zscore(tmp_path):
    p = write_nii(tmp_path / "a.nii.gz", textured(), np.diag([1.2, 1.0, 1.4, 1.0]))
    out = Preprocessor(PreprocessConfig(size=S))(p)
    assert type(out) is torch.Tensor and out.shape == (1, *S) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # exact z-score when the grid is kept (no interpolation after the intensity step)
    exact = Preprocessor(PreprocessConfig(spacing=None, size=(24, 24, 24)))(p)
    fg = exact[exact != 0]
    assert abs(fg.mean().item()) < 1e-3 and abs(fg.std(unbiased=False).item() - 1) < 1e-3
    assert (exact[0].numpy()[ball() == 0] == 0).all()        # background stays 0
    fg = out[out != 0]
    assert abs(fg.mean().item()) < 0.2 and 0.6 < fg.std().item() < 1.2


def test_percentile_clipping(tmp_path):
    arr = textured()
    arr[12, 11, 13] = 1e6                                       # one hot voxel
    p = write_nii(tmp_path / "spike.nii.gz", arr)
    out = Preprocessor(PreprocessConfig(spacing=None, size=(24, 24, 24)))(p)
    assert out.max().item() < 5.0                               # clipped, not a 1e6 outlier


def test_lps_file_equals_ras_equivalent(tmp_path):
    arr = textured(1, (20, 22, 24))
    ras = write_nii(tmp_path / "ras.nii.gz", arr, np.diag([1.0, 1.0, 1.0, 1.0]))
    # same world content stored in L-P-S voxel order
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[:3, 3] = [arr.shape[0] - 1, arr.shape[1] - 1, 0]
    lps = write_nii(tmp_path / "lps.nii.gz", arr[::-1, ::-1, :].copy(), aff)
    pre = Preprocessor(PreprocessConfig(spacing=(1.5, 1.5, 1.5), size=S))
    a, b = pre(ras), pre(lps)
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, Preprocessor(PreprocessConfig(orientation="LPS", size=S))(ras))


def test_spacing_changes_physical_scale(tmp_path):
    m = ball((24, 24, 24), (12, 12, 12), 5.0)
    p = write_nii(tmp_path / "m.nii.gz", m.astype(np.uint8))
    keep = Preprocessor(PreprocessConfig(spacing=(1, 1, 1), size=S, size_mode="crop_pad"))
    half = Preprocessor(PreprocessConfig(spacing=(2, 2, 2), size=S, size_mode="crop_pad"))
    n1 = keep.preprocess_mask(p).sum().item()
    n2 = half.preprocess_mask(p).sum().item()
    assert n1 == m.sum()                                        # 1 mm grid, centre crop keeps it
    assert 0.08 < n2 / n1 < 0.18                                # 2 mm voxels: ~1/8 the count
    img = half(write_nii(tmp_path / "i.nii.gz", m * 50 + 10))   # 24 mm -> 12 voxels, padded
    assert (img[0, :2] == 0).all() and (img[0, -2:] == 0).all()


def test_ct_window_and_modality_override(tmp_path):
    arr = np.zeros((16, 16, 16), np.float32)
    arr[:4], arr[4:8], arr[8:12], arr[12:] = -2000, -1000, 0, 3000
    p = write_nii(tmp_path / "ct.nii.gz", arr)
    cfg = PreprocessConfig(spacing=None, size=S, modality_intensity={"CT": "ct"})
    out = Preprocessor(cfg)(p, modality="CT")[0]
    assert out[:4].eq(0).all() and out[4:8].eq(0).all()
    assert torch.allclose(out[8:12], torch.tensor(0.5)) and out[12:].eq(1).all()
    mri = Preprocessor(cfg)(p, modality="T1WI")                 # default "mri" for others
    assert mri.min() < 0


def test_nan_and_inf_volume_raise_naming_file(tmp_path):
    arr = textured()
    arr[3, 4, 5] = np.nan
    p = write_nii(tmp_path / "bad_nan.nii.gz", arr)
    with pytest.raises(ValueError, match="bad_nan.nii.gz.*NaN"):
        Preprocessor(PreprocessConfig(size=S))(p)
    arr[3, 4, 5] = np.inf
    p = write_nii(tmp_path / "bad_inf.nii.gz", arr)
    with pytest.raises(VolumeReadError, match="bad_inf.nii.gz"):
        Preprocessor(PreprocessConfig(size=S))(p)


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_constant_volume_gives_finite_zeros(tmp_path, value):
    p = write_nii(tmp_path / "c.nii.gz", np.full((16, 16, 16), value, np.float32))
    out = Preprocessor(PreprocessConfig(size=S))(p)
    assert torch.isfinite(out).all() and out.abs().max().item() == 0


# ---- other formats --------------------------------------------------------------------------
def test_nrrd_matches_nifti(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    arr = textured(2, (18, 20, 22))
    pn = tmp_path / "v.nrrd"
    nrrd.write(str(pn), arr, {"space": "left-posterior-superior",
                              "space directions": np.diag([1.0, 1.5, 2.0]),
                              "space origin": np.zeros(3)})
    # LPS (i, j, k) -> (i, 1.5 j, 2 k) is RAS (-i, -1.5 j, 2 k)
    pi = write_nii(tmp_path / "v.nii.gz", arr, np.diag([-1.0, -1.5, 2.0, 1.0]))
    pre = Preprocessor(PreprocessConfig(size=S))
    assert torch.allclose(pre(pn), pre(pi), atol=1e-4)


def _write_dicom_series(folder: Path, arr_zyx: np.ndarray, spacing) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    dx, dy, dz = spacing
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(arr_zyx.shape[0]):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "MR", "p0", k + 1
        ds.Rows, ds.Columns = arr_zyx.shape[1:]
        ds.PixelSpacing = [dy, dx]                              # (between rows, between columns)
        ds.SliceThickness = dz
        ds.ImagePositionPatient = [0.0, 0.0, k * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(arr_zyx[k].astype("<u2")).tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def test_dicom_series_matches_nifti(tmp_path):
    pytest.importorskip("pydicom")
    rng = np.random.default_rng(3)
    zyx = ball((18, 20, 22), (9, 10, 11), 7) * rng.integers(200, 900, (18, 20, 22))
    zyx = zyx.astype(np.uint16)
    folder = _write_dicom_series(tmp_path / "series", zyx, (1.0, 1.5, 2.0))
    # DICOM voxel (col i, row j, slice k) sits at LPS (i, 1.5 j, 2 k) = RAS (-i, -1.5 j, 2 k)
    pi = write_nii(tmp_path / "v.nii.gz", zyx.transpose(2, 1, 0).astype(np.float32),
                   np.diag([-1.0, -1.5, 2.0, 1.0]))
    pre = Preprocessor(PreprocessConfig(size=S))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = pre(folder)
    assert torch.allclose(a, pre(pi), atol=1e-4)


def test_in_memory_volume_input(tmp_path):
    from medmap.data.io import read_volume

    p = write_nii(tmp_path / "a.nii.gz", textured())
    pre = Preprocessor(PreprocessConfig(size=S))
    assert torch.equal(pre(read_volume(p)), pre(p))


# ---- masks and inversion --------------------------------------------------------------------
@pytest.mark.parametrize("size_mode", ["resize", "crop_pad"])
def test_mask_preprocess_and_invert_overlap(tmp_path, size_mode):
    m = ball()
    p = write_nii(tmp_path / "m.nii.gz", m.astype(np.uint8), np.diag([1.2, 1.0, 1.4, 1.0]))
    pre = Preprocessor(PreprocessConfig(size=S, size_mode=size_mode))
    mk = pre.preprocess_mask(p)
    assert mk.shape == (1, *S) and set(mk.unique().tolist()) <= {0.0, 1.0}
    inv = pre.invert(mk, p, mask=True)
    assert tuple(inv.shape) == (1, 24, 24, 24)
    assert np.allclose(inv.affine.numpy(), np.diag([1.2, 1.0, 1.4, 1.0]))
    assert dice(inv[0].numpy(), m) > 0.8


def test_invert_cam_from_lps_file(tmp_path):
    m = ball((20, 22, 24), (8, 12, 14), 6)
    aff = np.diag([-1.0, -1.0, 1.5, 1.0])
    aff[:3, 3] = [19, 21, 0]
    p = write_nii(tmp_path / "lps.nii.gz", m * 100, aff)
    pre = Preprocessor(PreprocessConfig(size=S))
    cam = (pre(p)[0] > 0).float()                                # CAM-like map, (D, H, W)
    inv = pre.invert(cam, p)
    assert tuple(inv.shape) == (1, 20, 22, 24) and np.allclose(inv.affine.numpy(), aff)
    assert dice(inv[0].numpy(), m) > 0.8
    with pytest.raises(ValueError, match="invert expects"):
        pre.invert(torch.zeros(8, 8, 8), p)


def test_mask_resampled_onto_reference_grid(tmp_path):
    m = ball((24, 24, 24), (12, 12, 12), 7)
    img = write_nii(tmp_path / "img.nii.gz", m * 100)
    half = m[::2, ::2, ::2]                                     # same world box, 2 mm voxels
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = 0.0
    mp = write_nii(tmp_path / "mask.nii.gz", half.astype(np.uint8), aff)
    pre = Preprocessor(PreprocessConfig(size=S))
    on_ref = pre.preprocess_mask(mp, reference=img)
    assert dice(on_ref.numpy(), (pre(img) != 0).float().numpy()) > 0.8


# ---- ROI (organ mask) crop ------------------------------------------------------------------
def _organ_case(tmp_path: Path):
    """A 40^3 volume whose 'organ' is the box [10, 26) x [8, 30) x [12, 28), a lesion inside."""
    rng = np.random.default_rng(0)
    img = (50 + 5 * rng.standard_normal((40, 40, 40))).astype(np.float32)
    organ = np.zeros((40, 40, 40), np.uint8)
    organ[10:26, 8:30, 12:28] = 1
    lesion = ball((40, 40, 40), (18, 19, 20), 4.0)
    img[organ > 0] += 40
    img[lesion > 0] += 60
    return (write_nii(tmp_path / "img.nii.gz", img), write_nii(tmp_path / "organ.nii.gz", organ),
            write_nii(tmp_path / "lesion.nii.gz", lesion.astype(np.uint8)), img, lesion)


def test_roi_crop_equals_cropping_the_file_first(tmp_path):
    img_p, organ_p, _, img, _ = _organ_case(tmp_path)
    cfg = dict(spacing=None, size=S)
    roi = Preprocessor(PreprocessConfig(**cfg, roi_mask="organ", roi_margin_mm=2.0))
    x = roi(img_p, roi=organ_p)
    # the same crop by hand (bounding box +2 voxels at 1 mm), then the plain pipeline
    cropped = write_nii(tmp_path / "cropped.nii.gz", img[8:28, 6:32, 10:30])
    ref = Preprocessor(PreprocessConfig(**cfg))(cropped)
    assert x.shape == (1, *S)
    assert torch.allclose(x, ref, atol=1e-5)
    assert not torch.allclose(x, Preprocessor(PreprocessConfig(**cfg))(img_p), atol=1e-2)


def test_volume_scope_z_scores_the_whole_scan_before_the_roi_crop(tmp_path):
    img_p, organ_p, _, img, _ = _organ_case(tmp_path)
    cfg = dict(spacing=None, size=S, roi_mask="organ", roi_margin_mm=2.0)
    x = Preprocessor(PreprocessConfig(**cfg, intensity_scope="volume"))(img_p, roi=organ_p)
    # by hand: the whole file z-scored (clipped at its own percentiles), then the same crop
    whole = Preprocessor(PreprocessConfig(spacing=None, size=img.shape))(img_p)[0].numpy()
    by_hand = torch.nn.functional.interpolate(
        torch.from_numpy(whole[8:28, 6:32, 10:30])[None, None], size=S, mode="trilinear",
        align_corners=False)[0]
    assert x.shape == (1, *S)
    assert torch.allclose(x, by_hand, atol=1e-4)
    # the crop's own z-score (the default) gives other values: the ROI's level is divided out
    crop_scope = Preprocessor(PreprocessConfig(**cfg))(img_p, roi=organ_p)
    assert not torch.allclose(x, crop_scope, atol=1e-2)
    assert x.mean() > crop_scope.mean() + 0.2   # the organ is brighter than the scan's mean
    with pytest.raises(ValueError, match="intensity_scope"):
        PreprocessConfig(intensity_scope="organ")


def test_roi_crop_enlarges_lesion_and_inverts_to_native_grid(tmp_path):
    img_p, organ_p, les_p, _, lesion = _organ_case(tmp_path)
    plain = Preprocessor(PreprocessConfig(spacing=None, size=S))
    roi = Preprocessor(PreprocessConfig(spacing=None, size=S, roi_mask="organ", roi_margin_mm=0))
    frac_plain = plain.preprocess_mask(les_p).mean().item()
    m = roi.preprocess_mask(les_p, reference=img_p, roi=organ_p)
    assert m.mean().item() > 5 * frac_plain          # the lesion fills more of the input
    back = roi.invert(m[0], img_p, mask=True, roi=organ_p)
    assert tuple(back.shape) == (1, 40, 40, 40) and np.allclose(back.affine.numpy(), np.eye(4))
    assert dice(back[0].numpy(), lesion) > 0.8
    outside = np.ones((40, 40, 40), bool)
    outside[10:26, 8:30, 12:28] = False
    assert float(np.abs(back[0].numpy()[outside]).max()) == 0.0   # padded back with zeros


def test_roi_errors_name_the_file_and_the_fix(tmp_path):
    img_p, organ_p, _, _, _ = _organ_case(tmp_path)
    pre = Preprocessor(PreprocessConfig(spacing=None, size=S, roi_mask="liver"))
    with pytest.raises(ValueError, match=r"img.nii.gz.*roi_mask is 'liver'.*masks.liver"):
        pre(img_p)
    empty = write_nii(tmp_path / "empty.nii.gz", np.zeros((40, 40, 40), np.uint8))
    with pytest.raises(ValueError, match=r"empty.nii.gz.*'liver' ROI mask is empty"):
        pre(img_p, roi=empty)
    with pytest.raises(ValueError, match="roi_margin_mm must be >= 0"):
        PreprocessConfig(roi_mask="liver", roi_margin_mm=-1)
    with pytest.raises(ValueError, match="roi_mask must be a manifest masks key"):
        PreprocessConfig(roi_mask="  ")
    assert PreprocessConfig.from_dict(PreprocessConfig(roi_mask="liver").to_dict()).roi_mask \
        == "liver"


def test_foreground_box_is_monai_s_bounding_box():
    """The ROI crop's box equals MONAI's generate_spatial_bounding_box (which it replaces for
    speed), margins beyond the volume's edge and empty masks included."""
    from monai.data import MetaTensor
    from monai.transforms.utils import generate_spatial_bounding_box

    rng = np.random.default_rng(0)
    for _ in range(60):
        m = np.zeros((1, *rng.integers(3, 14, 3)), np.float32)
        for _ in range(rng.integers(0, 3)):                     # 0-2 boxes, some negative
            lo = [int(rng.integers(0, n)) for n in m.shape[1:]]
            m[0, lo[0]:lo[0] + 3, lo[1]:lo[1] + 2, lo[2]:lo[2] + 4] = rng.choice([1.0, -1.0])
        margin = [int(x) for x in rng.integers(0, 5, 3)]
        t = MetaTensor(torch.from_numpy(m))
        start, end = generate_spatial_bounding_box(t, select_fn=lambda a: a > 0, margin=margin)
        assert foreground_box(t, margin) == ([int(v) for v in start], [int(v) for v in end])
