"""RadGenome-Brain MRI imported with the challenge downloads as unpacked.

Fixtures follow the official documentation:

* the RadGenome-Brain MRI release (huggingface.co/datasets/JiayuLei/RadGenome-Brain_MRI, file
  tree): ``train_val_test_split.json`` + ``BraTS_GLI/ BraTS_MEN/ BraTS_MET/ ISLES22/ WMH/``, each
  with ``global_finding.json``, ``impression.json``, ``modal_wise_finding.json``; ids as in the
  AutoRG-Brain repository's examples (``BraTS-GLI-01303-000-t1n``,
  ``sub-strokecase0106_ses-0001_dwi``, ``Singapore_69_FLAIR``);
* BraTS 2023: ``ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-00012-000/
  BraTS-GLI-00012-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (MEN: ``.../BraTS-MEN-Train/...``);
* ISLES 2022 (BIDS): ``sub-strokecase0001/ses-0001/{anat,dwi}/`` with ``.json`` sidecars,
  masks in ``derivatives/sub-strokecase0001/ses-0001/..._msk.nii.gz`` (+ ``_snp.png``);
* WMH 2017 (dataverse release): ``training/<Site>/[<scanner>/]<id>/{orig,pre}/{FLAIR,T1,3DT1}
  .nii.gz`` + ``wmh.nii.gz``.
"""

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmap.data.manifest import Manifest, ManifestError
from medmap.data.sources.radgenome import RadGenomeWarning, import_radgenome
from medmap.data.sources.radgenome_images import parse_image_roots

_RNG = np.random.default_rng(11)
GLI = ("BraTS-GLI-00012-000", "BraTS-GLI-00013-000")
MEN = ("BraTS-MEN-00010-000",)
MET = ("BraTS-MET-00005-000",)
ISL = ("sub-strokecase0001", "sub-strokecase0002")
WMH = ("Utrecht_0", "Singapore_69", "GE3T_100")


def _nii(path: Path, shape=(8, 8, 6), mask=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(shape, np.uint8) if mask else _RNG.random(shape).astype(np.float32)
    if mask:
        arr[2:4, 2:4, 1:3] = 1
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def _json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _subset(release: Path, name: str, ids, modal):
    _json(release / name / "global_finding.json", {c: f"Finding of {c}." for c in ids})
    _json(release / name / "impression.json", {c: f"Impression of {c}." for c in ids})
    _json(release / name / "modal_wise_finding.json", modal)


@pytest.fixture()
def release(tmp_path):
    """The Hugging Face release as downloaded: JSON only."""
    r = tmp_path / "RadGenome-Brain_MRI"
    _subset(r, "BraTS_GLI", GLI, {f"{c}-{m}": f"{m} finding." for c in GLI
                                  for m in ("t1n", "t1c", "t2w", "t2f")})
    _subset(r, "BraTS_MEN", MEN, {f"{MEN[0]}-t2f": "Mild oedema."})
    _subset(r, "BraTS_MET", MET, {f"{MET[0]}-t1c": "Enhancing nodules."})
    _subset(r, "ISLES22", ISL, {f"{c}_ses-0001_{m}": f"{m} finding." for c in ISL
                                for m in ("dwi", "adc")})
    _subset(r, "WMH", WMH, {c: {"FLAIR": "Hyperintense foci.", "T1": "Hypointense."}
                            for c in WMH})
    _json(r / "train_val_test_split.json", {
        "train": [f"{c}-{m}" for c in GLI[:1] + MEN + MET for m in ("t1n", "t1c", "t2w", "t2f")]
        + [f"{ISL[0]}_ses-0001_dwi", f"{ISL[0]}_ses-0001_adc", "Utrecht_0_FLAIR", "Utrecht_0_T1",
           "GE3T_100_FLAIR"],
        "val": [f"{GLI[1]}-t2f", f"{ISL[1]}_ses-0001_dwi", "Singapore_69_FLAIR"],
        "test": [],
    })
    return r


def _brats(top: Path, cid: str, seg=True) -> None:
    for m in ("t1n", "t1c", "t2w", "t2f"):
        _nii(top / cid / f"{cid}-{m}.nii.gz")
    if seg:
        _nii(top / cid / f"{cid}-seg.nii.gz", mask=True)


def _isles(top: Path, cid: str) -> None:
    ses = top / cid / "ses-0001"
    _nii(ses / "anat" / f"{cid}_ses-0001_FLAIR.nii.gz", shape=(10, 10, 8))  # its own grid
    (ses / "anat" / f"{cid}_ses-0001_FLAIR.json").write_text("{}")
    for m in ("dwi", "adc"):
        _nii(ses / "dwi" / f"{cid}_ses-0001_{m}.nii.gz")
        (ses / "dwi" / f"{cid}_ses-0001_{m}.json").write_text("{}")
    der = top / "derivatives" / cid / "ses-0001"
    _nii(der / f"{cid}_ses-0001_msk.nii.gz", mask=True)
    (der / f"{cid}_ses-0001_snp.png").write_bytes(b"\x89PNG")


def _wmh(case: Path) -> None:
    for sub in ("orig", "pre"):
        for m in ("FLAIR", "T1", "3DT1"):
            _nii(case / sub / f"{m}.nii.gz")
    (case / "orig" / "reg_3DT1_to_FLAIR.txt").write_text("")
    _nii(case / "wmh.nii.gz", mask=True)


@pytest.fixture()
def downloads(tmp_path):
    """The challenge downloads unpacked side by side, under their own top folders."""
    d = tmp_path / "downloads"
    for cid in GLI:
        _brats(d / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", cid)
    _brats(d / "ASNR-MICCAI-BraTS2023-MEN-Challenge-TrainingData" / "BraTS-MEN-Train", MEN[0])
    for cid in ISL:
        _isles(d / "ISLES-2022", cid)
    w = d / "dataverse_files" / "training"
    _wmh(w / "Utrecht" / "0")
    _wmh(w / "Singapore" / "69")
    _wmh(w / "Amsterdam" / "GE3T" / "100")
    return d


def _quiet(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RadGenomeWarning)
        return import_radgenome(**kw)


def test_brats_official_top_folders(release, downloads):
    """Before: 'subset BraTS_GLI: no images found' (only a subset-named child of the image root
    or case folders directly in it were looked at)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # complete cases: nothing to warn about
        m = import_radgenome(release, subsets=["BraTS_GLI", "BraTS_MEN"], image_root=downloads)
    by = {c.case_id: c for c in m}
    assert list(by) == [*GLI, *MEN]
    assert [c.split for c in m] == ["train", "val", "train"]
    g = by[GLI[0]]
    assert list(g.modalities) == ["T1WI", "T1C", "T2WI", "T2FLAIR"]
    assert "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData" in g.modalities["T1C"]
    assert g.masks["lesion"].endswith(f"{GLI[0]}-seg.nii.gz")
    assert g.reports["T2FLAIR"] == "t2f finding." and g.reports["global"].startswith("Finding")
    assert "BraTS-MEN-Train" in by[MEN[0]].modalities["T2FLAIR"]


def test_wmh_site_id_nesting(release, downloads):
    """Before: 'subset WMH: no images found' (id Utrecht_0 never matched Utrecht/0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = import_radgenome(release, subsets=["WMH"], image_root=downloads)
    by = {c.case_id: c for c in m}
    assert list(by) == list(WMH)
    assert [c.split for c in m] == ["train", "val", "train"]
    u = by["Utrecht_0"]
    assert list(u.modalities) == ["T1WI", "T2FLAIR"]                 # 3DT1 skipped
    assert u.modalities["T2FLAIR"].endswith("training/Utrecht/0/pre/FLAIR.nii.gz")
    assert u.masks == {"lesion": str((downloads / "dataverse_files/training/Utrecht/0/wmh.nii.gz")
                                     .resolve())}
    assert u.reports["T2FLAIR"] == "Hyperintense foci." and u.reports["T1WI"] == "Hypointense."
    assert "/Amsterdam/GE3T/100/pre/" in by["GE3T_100"].modalities["T1WI"]


def test_isles_masks_in_derivatives(release, downloads):
    """Before: the _msk.nii.gz files in derivatives/ were dropped without a word."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = import_radgenome(release, subsets=["ISLES2022"], image_root=downloads / "ISLES-2022")
    by = {c.case_id: c for c in m}
    assert list(by) == list(ISL)
    c = by[ISL[0]]
    assert list(c.modalities) == ["DWI", "ADC"]          # FLAIR (another grid) is not RadGenome's
    assert c.modalities["DWI"].endswith(f"ses-0001/dwi/{ISL[0]}_ses-0001_dwi.nii.gz")
    assert c.masks["lesion"].endswith(f"derivatives/{ISL[0]}/ses-0001/{ISL[0]}_ses-0001_msk.nii.gz")
    assert c.reports["DWI"] == "dwi finding." and c.reports["ADC"] == "adc finding."
    validate = pytest.importorskip("medmap.data.validate")
    assert validate.validate_manifest(m) == []           # mask and volumes share one grid
    # a case whose mask is missing is named in the warning
    next((downloads / "ISLES-2022" / "derivatives" / ISL[1]).rglob("*_msk.nii.gz")).unlink()
    with pytest.warns(RadGenomeWarning, match=rf"{ISL[1]} \(ISLES22\): no lesion mask"):
        import_radgenome(release, subsets=["ISLES22"], image_root=downloads)


def test_several_roots_and_subset_mapping(release, downloads, tmp_path):
    """Before: a list of roots or SUBSET=PATH was not accepted (one image_root only)."""
    m = _quiet(root=release, subsets=["BraTS_GLI", "WMH", "ISLES22"], image_root=[
        downloads / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData",
        f"WMH={downloads / 'dataverse_files'}", downloads / "ISLES-2022"])
    assert len(m) == len(GLI) + len(WMH) + len(ISL)
    # a subset with its own root searches only that root
    with pytest.raises(ManifestError, match=r"subset WMH: no images found.*"
                                            r"searched .*ISLES-2022.* recursively"):
        _quiet(root=release, subsets=["WMH"], image_root=[downloads,
                                                          f"wmh={downloads / 'ISLES-2022'}"])
    assert parse_image_roots({"isles2022": ["/a", "/b"]}) == ([], {"ISLES22": [Path("/a"),
                                                                              Path("/b")]})
    with pytest.raises(ValueError, match="SUBSET=PATH"):
        parse_image_roots(["BraTS_PED=/x"])
    with pytest.raises(ManifestError, match=r"image root .*nope does not exist"):
        _quiet(root=release, subsets=["WMH"], image_root=tmp_path / "nope")


def test_missing_images_named_and_skip_missing(release, downloads):
    """Before: no skip_missing, and the message named only the top folders looked in."""
    gone = downloads / "dataverse_files" / "training" / "Singapore"
    for p in sorted(gone.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    with pytest.raises(ManifestError) as e:
        _quiet(root=release, subsets=["WMH", "BraTS_MET"], image_root=downloads)
    lines = str(e.value).splitlines()
    one = next(x for x in lines if "'Singapore_69'" in x)
    assert "no image files (searched" in one and str(downloads) in one
    assert "Singapore_69/ (or Singapore/69/)" in one and "--skip-missing" in one
    met = next(x for x in lines if "subset BraTS_MET" in x)
    assert "no images found for any of its 1 cases" in met and "--skip-missing" in met
    assert "ASNR-MICCAI-BraTS2023-MET-Challenge-TrainingData" in met

    with pytest.warns(RadGenomeWarning, match=r"skipped 2 case\(s\) whose images were not found "
                                              r"\(WMH: 1, BraTS_MET: 1\)"):
        m = import_radgenome(release, subsets=["WMH", "BraTS_MET"], image_root=downloads,
                             skip_missing=True)
    assert [c.case_id for c in m] == ["Utrecht_0", "GE3T_100"]
    with pytest.raises(ManifestError, match="no case with images"):
        _quiet(root=release, subsets=["BraTS_MET"], skip_missing=True)


def test_cli_repeatable_image_roots_and_skip_missing(release, downloads, tmp_path, capsys):
    from medmap.cli import main

    out = tmp_path / "rg.jsonl"
    rc = main(["data", "import-radgenome", str(release), "--out", str(out),
               "--image-root", str(downloads / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"),
               "--image-root", str(downloads / "ASNR-MICCAI-BraTS2023-MEN-Challenge-TrainingData"),
               "--image-root", f"ISLES22={downloads / 'ISLES-2022'}",
               "--image-root", f"WMH={downloads / 'dataverse_files'}", "--skip-missing"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert f"wrote {len(GLI) + len(MEN) + len(ISL) + len(WMH)} cases" in cap.out
    assert "warning:" in cap.err and "skipped 1 case(s)" in cap.err and "BraTS_MET: 1" in cap.err
    back = Manifest.load(out)
    assert {c.case_id for c in back} >= {"Utrecht_0", ISL[0], GLI[0], MEN[0]}
    rc = main(["data", "import-radgenome", str(release), "--out", str(out), "--image-root",
               str(downloads)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "subset BraTS_MET: no images found" in err
