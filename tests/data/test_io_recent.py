"""medmap.data.io.read_recent: a case's ROI mask is decoded once, not once per sequence."""
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from medmap.data import io as mio
from medmap.data.preprocess import PreprocessConfig, Preprocessor


def _write(path, value, shape=(12, 12, 12)):
    arr = np.zeros(shape, np.float32)
    arr[3:9, 3:9, 3:9] = value
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def test_the_last_files_are_decoded_once_and_every_caller_gets_its_own_copy(tmp_path,
                                                                            count_reads):
    decodes = count_reads
    a, b, c = (_write(tmp_path / f"{n}.nii", v) for n, v in (("a", 1), ("b", 2), ("c", 3)))
    first = mio.read_recent(a)
    first.array[:] = -1                             # a caller modifying its copy
    again = mio.read_recent(a)
    assert decodes == [str(a)] and again.array.max() == 1 and again.path == first.path
    mio.read_recent(b), mio.read_recent(a)          # a is among the last two: no decode
    assert decodes == [str(a), str(b)]
    mio.read_recent(c), mio.read_recent(a)          # c evicted b, the least recently read
    assert decodes == [str(a), str(b), str(c)]
    mio.read_recent(b)
    assert decodes[-1] == str(b) and len(decodes) == 4


def test_a_rewritten_file_is_decoded_again(tmp_path, count_reads):
    decodes = count_reads
    a = _write(tmp_path / "a.nii", 1)
    assert mio.read_recent(a).array.max() == 1
    _write(a, 5)
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))    # a new stamp for sure
    assert mio.read_recent(a).array.max() == 5 and len(decodes) == 2


def test_missing_files_still_raise_the_readers_error(tmp_path, count_reads):
    decodes = count_reads
    with pytest.raises(mio.VolumeReadError, match="file not found"):
        mio.read_recent(tmp_path / "none.nii")


def test_preprocessing_every_sequence_decodes_the_roi_mask_once(tmp_path, count_reads):
    decodes = count_reads
    """mri_reference with a lesion ROI reads the mask for the crop and for the reference
    tissue of every sequence; the results are those of fresh reads."""
    roi = _write(tmp_path / "lesion.nii", 1, shape=(20, 20, 20))
    imgs = [_write(tmp_path / f"s{i}.nii", 10 + i, shape=(20, 20, 20)) for i in range(3)]
    pre = Preprocessor(PreprocessConfig(spacing=None, size=(8, 8, 8), roi_mask="lesion",
                                        intensity="mri_reference"))
    out = [pre(p, modality="T1WI", roi=roi) for p in imgs]
    assert decodes.count(str(roi)) == 1 and len(decodes) == 4
    fresh = Preprocessor(pre.cfg)
    for p, o in zip(imgs, out):
        assert torch.equal(fresh(mio.read_volume(p), modality="T1WI",
                                 roi=mio.read_volume(roi)), o)
