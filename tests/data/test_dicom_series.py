"""DICOM series as scanners write them, built with pydicom from a real volume (nilearn's MNI152
template, downsampled): oblique orientation, per-slice RescaleSlope/Intercept, slices in random
file and InstanceNumber order, several series in one folder, a missing slice. The volume read
back must equal the source within the rescale rounding, affine included."""

import math
import shutil

import numpy as np
import pytest

from medmap.data.io import (
    VolumeReadError,
    dicom_series,
    read_shape,
    read_volume,
    series_files,
    split_series,
    volume_format,
)

pydicom = pytest.importorskip("pydicom")

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def mni() -> np.ndarray:
    """MNI152 (1 mm, 197x233x189) downsampled to 17x17x16, scaled to 0..1000."""
    datasets = pytest.importorskip("nilearn.datasets")
    img = datasets.load_mni152_template()
    return (np.asarray(img.get_fdata())[::12, ::14, ::12] * 1000.0).astype(np.float32)


def _rot(axis: int, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_affine(spacing=(1.2, 0.9, 2.5), origin=(-40.0, 30.0, 12.0)) -> np.ndarray:
    """RAS affine of an oblique acquisition: rotated 25 deg about z and 15 deg about x."""
    aff = np.eye(4)
    aff[:3, :3] = _rot(2, 25.0) @ _rot(0, 15.0) @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def _ds(v) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(v))


def write_series(folder, vol, affine_ras, *, rng, series_uid=None, description="T1 obl",
                 number=1, shuffle=True, slopes=None, intercept=-100.0):
    """Write ``vol`` (X, Y, Z) as one MR series (one file per slice) into ``folder``.

    File names and InstanceNumbers are random when ``shuffle``; each slice gets its own
    RescaleSlope. Returns (series UID, per-slice slopes, {slice index: file})."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = _LPS @ affine_ras
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_dir, col_dir = lps[:3, 0] / dc, lps[:3, 1] / dr
    nz = vol.shape[2]
    series_uid = series_uid or generate_uid()
    study, frame = generate_uid(), generate_uid()
    slopes = rng.uniform(0.05, 0.2, nz) if slopes is None else np.asarray(slopes, float)
    instance = rng.permutation(nz) + 1 if shuffle else np.arange(nz) + 1
    files = {}
    for k in range(nz):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame
        ds.Modality, ds.PatientID = "MR", "mni152"
        ds.SeriesNumber, ds.SeriesDescription = number, description
        ds.InstanceNumber = int(instance[k])
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.PixelSpacing = [_ds(dr), _ds(dc)]                 # (between rows, between columns)
        ds.SliceThickness = _ds(np.linalg.norm(lps[:3, 2]))
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slopes[k]), _ds(intercept)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        raw = np.round((vol[:, :, k].T - intercept) / float(_ds(slopes[k])))
        ds.PixelData = np.ascontiguousarray(raw.astype("<i2")).tobytes()
        name = f"IM{rng.integers(1 << 30):010d}" if shuffle else f"{k:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        files[k] = folder / name
    return series_uid, slopes, files


def test_oblique_rescaled_shuffled_series_reads_back(tmp_path, mni):
    rng = np.random.default_rng(0)
    aff = oblique_affine()
    uid, slopes, files = write_series(tmp_path / "dcm", mni, aff, rng=rng)
    # the slices are neither in file-name nor in InstanceNumber order
    by_name = sorted(files, key=lambda k: files[k].name)
    assert by_name != sorted(by_name)
    vol = read_volume(tmp_path / "dcm")
    assert vol.array.shape == mni.shape and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.affine, aff, atol=1e-6)               # oblique kept
    assert np.abs(vol.array - mni).max() <= slopes.max() / 2 + 1e-3      # rescale applied
    assert read_shape(tmp_path / "dcm") == mni.shape
    assert volume_format(tmp_path / "dcm") == "dicom"


def test_reverse_instance_order_and_preprocessing_agree_with_nifti(tmp_path, mni):
    """A series stored head-first with descending positions: the same voxels and world grid as
    the NIfTI of the source volume, also after medmap's preprocessing."""
    import nibabel as nib
    import torch

    from medmap.data.preprocess import PreprocessConfig, Preprocessor

    rng = np.random.default_rng(1)
    aff = oblique_affine(spacing=(1.0, 1.0, 2.0))
    # slice k written at the position of slice nz-1-k: the scanner's "descending" order
    flipped = np.eye(4)
    flipped[2, 2], flipped[2, 3] = -1, mni.shape[2] - 1
    write_series(tmp_path / "dcm", mni[:, :, ::-1], aff @ flipped, rng=rng,
                 slopes=np.full(mni.shape[2], 0.05))
    vol = read_volume(tmp_path / "dcm")
    np.testing.assert_allclose(vol.affine, aff, atol=1e-6)
    assert np.abs(vol.array - mni).max() <= 0.025 + 1e-3
    nib.save(nib.Nifti1Image(mni, aff), str(tmp_path / "src.nii.gz"))
    # (no resampling: float32 rounding of the NIfTI affine may move an oblique resampled grid)
    pre = Preprocessor(PreprocessConfig(size=(12, 12, 12), spacing=None))
    assert torch.allclose(pre(tmp_path / "dcm"), pre(tmp_path / "src.nii.gz"), atol=1e-2)


def test_several_series_in_one_folder(tmp_path, mni):
    rng = np.random.default_rng(2)
    folder = tmp_path / "study"
    a_uid, a_slopes, _ = write_series(folder, mni, oblique_affine(), rng=rng, number=3,
                                      description="T1 obl")
    small = mni[2:14, 3:13, 4:12]
    axial = np.diag([-0.8, -0.8, 3.0, 1.0])   # plain axial: LPS rows (1,0,0), columns (0,1,0)
    axial[:3, 3] = (10.0, -20.0, 5.0)
    b_uid, b_slopes, _ = write_series(folder, small, axial, rng=rng, number=7,
                                      description="T2 ax")
    with pytest.raises(VolumeReadError) as e:
        read_volume(folder)
    msg = str(e.value)
    assert "holds 2 DICOM series" in msg and a_uid in msg and b_uid in msg
    assert "T1 obl" in msg and "T2 ax" in msg and f"{folder}#<SeriesInstanceUID>" in msg
    assert [s.uid for s in dicom_series(folder)] == [a_uid, b_uid]  # SeriesNumber order

    a = read_volume(f"{folder}#{a_uid}")
    np.testing.assert_allclose(a.affine, oblique_affine(), atol=1e-6)
    assert np.abs(a.array - mni).max() <= a_slopes.max() / 2 + 1e-3
    assert a.path == f"{folder}#{a_uid}"
    b = read_volume(folder, series=b_uid)
    np.testing.assert_allclose(b.affine, axial, atol=1e-6)
    assert np.abs(b.array - small).max() <= b_slopes.max() / 2 + 1e-3
    assert read_shape(f"{folder}#{b_uid}") == small.shape
    assert volume_format(f"{folder}#{b_uid}") == "dicom"
    assert split_series(f"{folder}#{b_uid}") == (folder, b_uid)
    assert len(series_files(f"{folder}#{b_uid}")) == small.shape[2]
    assert len(series_files(folder)) == mni.shape[2] + small.shape[2]

    with pytest.raises(VolumeReadError, match=r"no DICOM series 1\.2\.3 .*T1 obl.*T2 ax"):
        read_volume(f"{folder}#1.2.3")
    with pytest.raises(VolumeReadError, match="is not a SeriesInstanceUID"):
        read_volume(f"{folder}#T1")


def test_missing_slice_is_an_error(tmp_path, mni):
    rng = np.random.default_rng(3)
    _, _, files = write_series(tmp_path / "dcm", mni, oblique_affine(), rng=rng)
    files[6].unlink()
    with pytest.raises(VolumeReadError) as e:
        read_volume(tmp_path / "dcm")
    msg = str(e.value)
    assert "uneven slice spacing" in msg and "1 slice(s) missing" in msg
    assert files[5].name in msg and files[7].name in msg
    assert "5 mm between" in msg and "2.5 mm apart" in msg and "complete series" in msg
    with pytest.raises(VolumeReadError, match="uneven slice spacing"):
        read_shape(tmp_path / "dcm")


def test_duplicate_positions_and_stray_files(tmp_path, mni):
    rng = np.random.default_rng(4)
    vol = mni[:, :, :6]
    uid, _, files = write_series(tmp_path / "dcm", vol, oblique_affine(), rng=rng)
    (tmp_path / "dcm" / "README.txt").write_text("not DICOM")        # ignored
    (tmp_path / "dcm" / ".DS_Store").write_bytes(b"\0\1")             # ignored
    assert read_volume(tmp_path / "dcm").array.shape == vol.shape
    # a second echo at the same positions, in the same series
    shutil.copy(files[2], tmp_path / "dcm" / "echo2")
    ds = pydicom.dcmread(tmp_path / "dcm" / "echo2")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "dcm" / "echo2")
    with pytest.raises(VolumeReadError, match=r"lie at the same position.*one folder each"):
        read_volume(tmp_path / "dcm")
    with pytest.raises(VolumeReadError, match="holds no DICOM image files"):
        read_volume(tmp_path / "dcm" / "..")  # tmp_path: no DICOM file directly inside


def test_manifest_picks_a_series_by_uid(tmp_path, mni):
    """A manifest names one series of a shared folder as ``folder#<SeriesInstanceUID>``."""
    from medmap.data.manifest import Case, Manifest
    from medmap.data.validate import validate_manifest

    rng = np.random.default_rng(5)
    folder = tmp_path / "study"
    t1, _, _ = write_series(folder, mni, oblique_affine(), rng=rng, number=1)
    t2, _, _ = write_series(folder, mni[:, :, :10], oblique_affine(), rng=rng, number=2)
    ok = Case("p1", "brain", "train", None, {"T1WI": f"{folder}#{t1}", "T2WI": f"{folder}#{t2}"})
    m = Manifest.load(Manifest([ok]).save(tmp_path / "m.jsonl"))
    assert validate_manifest(m) == []
    bad = Case("p2", "brain", "train", None, {"T1WI": str(folder)})
    (line,) = validate_manifest(Manifest([bad], tmp_path))
    assert "case 'p2': modalities.T1WI" in line and "holds 2 DICOM series" in line
    assert f"#{t1}" in line
