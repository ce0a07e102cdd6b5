import json

import nibabel as nib
import numpy as np
import pytest

from medmap.cli import main
from medmap.data.manifest import Case, Manifest, ManifestError
from medmap.data.validate import require_valid, validate_manifest


def _nii(path, arr):
    nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), np.eye(4)), str(path))
    return path.name


def _good_volume(rng, shape=(8, 8, 6)):
    return rng.random(shape).astype(np.float32) + 0.1


def test_roundtrip_jsonl_and_csv(tmp_path):
    m = Manifest([
        Case("a", "liver", "train", "hepatic_cyst", {"T2WI": "a/T2WI.nii.gz"},
             {"T2WI": "bright", "global": "cyst"}, {"lesion": "a/m.nii.gz"}),
        Case("b", "brain", "test", None, {"T1WI": "/abs/b.nii"}),
    ])
    p = m.save(tmp_path / "cases.jsonl")
    back = Manifest.load(p)
    assert [c.to_json() for c in back] == [c.to_json() for c in m]
    assert back.resolved()[0].modalities["T2WI"] == str(tmp_path / "a/T2WI.nii.gz")
    assert back.resolved()[1].modalities["T1WI"] == "/abs/b.nii"
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id,organ,split,label,mod:T2WI,report:T2WI,mask:lesion\n"
                   "a,liver,train,4,a/T2WI.nii.gz,bright,\n", encoding="utf-8")
    c = Manifest.load(csv).cases[0]
    assert c.label == "hepatic_cyst" and c.modalities == {"T2WI": "a/T2WI.nii.gz"}
    assert c.reports == {"T2WI": "bright"} and c.masks == {}
    assert c.label_index == 4


def test_malformed_manifest_lists_every_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"case_id": "a", "organ": "liver", "split": "train", "modalities": {}}\n'
                 "not json\n"
                 '{"case_id": "b", "organ": "liver", "split": "train"}\n'
                 '{"case_id": "c", "organ": "liver", "split": "train", "modalities": {"T2WI": 3},'
                 ' "colour": 1}\n', encoding="utf-8")
    with pytest.raises(ManifestError) as e:
        Manifest.load(p)
    msg = str(e.value)
    assert "line 1" not in msg  # parses; the validator reports its empty modalities
    assert "line 2: invalid JSON" in msg
    assert "line 3 case 'b': field 'modalities' is missing" in msg
    assert "unknown field 'colour'" in msg and "entries ['T2WI'] are not strings" in msg
    assert len(e.value.problems) == 4


def _write_bad_dataset(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path
    good = _nii(d / "good.nii.gz", _good_volume(rng))
    _nii(d / "full.nii.gz", _good_volume(rng, (32, 32, 32)))
    raw = (d / "full.nii.gz").read_bytes()
    (d / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    flat = _nii(d / "flat.nii.gz", rng.random((8, 8)))
    frames = _nii(d / "frames.nii.gz", rng.random((8, 8, 6, 3)))
    fived = _nii(d / "fived.nii.gz", rng.random((4, 4, 4, 2, 2)))
    one_frame = _nii(d / "oneframe.nii.gz", rng.random((8, 8, 6, 1)) + 0.1)
    nan = _good_volume(rng)
    nan[1, 2, 3] = np.nan
    nan[0, 0, 0] = np.inf
    nanf = _nii(d / "nan.nii.gz", nan)
    zero = _nii(d / "zero.nii.gz", np.zeros((8, 8, 6)))
    mask_bad = _nii(d / "mask_bad.nii.gz", np.zeros((8, 8, 5)))
    mask_ok = _nii(d / "mask_ok.nii.gz", np.zeros((8, 8, 6)))
    recs = [
        {"case_id": "ok", "organ": "liver", "split": "train", "label": 0,
         "modalities": {"T2WI": good, "DWI": one_frame}, "reports": {"T2WI": "bright lesion"},
         "masks": {"lesion": mask_ok}},
        {"case_id": "missing", "organ": "liver", "split": "train", "label": "hepatic_cyst",
         "modalities": {"T2WI": "nope.nii.gz"}},
        {"case_id": "cut", "organ": "liver", "split": "train", "label": 1,
         "modalities": {"C+A": "cut.nii.gz"}},
        {"case_id": "shapes", "organ": "liver", "split": "val", "label": 1,
         "modalities": {"C+V": flat, "C+Delay": frames, "C-pre": fived}},
        {"case_id": "values", "organ": "brain", "split": "test", "label": "benign",
         "modalities": {"T1WI": nanf, "T1C": zero}},
        {"case_id": "vocab", "organ": "brain", "split": "train", "label": "glioma",
         "modalities": {"PET": good}},
        {"case_id": "vocab", "organ": "brain", "split": "holdout", "label": "benign",
         "modalities": {"T1WI": good}},
        {"case_id": "reports", "organ": "liver", "split": "train", "label": 2,
         "modalities": {"T2WI": good}, "reports": {"T2WI": "  ", "DWI": "restricted"},
         "masks": {"lesion": mask_bad}},
    ]
    lines = [json.dumps(r) for r in recs]
    # a report with bytes that are not UTF-8 (latin-1 'é')
    bad_utf8 = ('{"case_id": "latin", "organ": "liver", "split": "train", "label": 3, '
                '"modalities": {"T2WI": "%s"}, "reports": {"T2WI": "l\xe9sion"}}' % good)
    p = d / "cases.jsonl"
    p.write_bytes(("\n".join(lines) + "\n").encode() + bad_utf8.encode("latin-1") + b"\n")
    return p


def test_validate_reports_every_problem(tmp_path):
    p = _write_bad_dataset(tmp_path)
    problems = validate_manifest(Manifest.load(p))
    text = "\n".join(problems)
    expected = [
        ("'missing'", "modalities.T2WI", "file not found"),
        ("'cut'", "modalities.C+A", "unreadable or truncated"),
        ("'shapes'", "modalities.C+V", "got a 2D image"),
        ("'shapes'", "modalities.C+Delay", "expected a 3D volume"),
        ("'shapes'", "modalities.C-pre", "(5D)"),
        ("'values'", "modalities.T1WI", "1 NaN and 1 Inf voxels"),
        ("'values'", "modalities.T1C", "constant volume"),
        ("'vocab'", "case_id", "appears 2 times"),
        ("'vocab'", "label", "'glioma' is not a brain class"),
        ("'vocab'", "modalities.PET", "unknown modality for brain"),
        ("'vocab'", "split", "'holdout' is not a split"),
        ("'reports'", "reports.T2WI", "empty report"),
        ("'reports'", "reports.DWI", "modality the case does not have"),
        ("'reports'", "masks.lesion", "mask shape (8, 8, 5) does not match T2WI (8, 8, 6)"),
        ("'latin'", "reports.T2WI", "not valid UTF-8"),
    ]
    for case, field, what in expected:
        hits = [ln for ln in problems if case in ln and field in ln and what in ln]
        assert hits, f"no problem line for {case} {field} {what!r} in:\n{text}"
    assert not [ln for ln in problems if "'ok'" in ln], text
    assert len(problems) == len(expected)
    # every line names a fix
    assert all(";" in ln for ln in problems), text


def test_require_valid_and_cli_exit_codes(tmp_path, capsys):
    p = _write_bad_dataset(tmp_path)
    with pytest.raises(ManifestError) as e:
        require_valid(Manifest.load(p), p)
    assert "15 problems" in str(e.value)
    assert main(["data", "validate", str(p)]) == 1
    out = capsys.readouterr().out
    assert "case 'cut': modalities.C+A" in out
    rng = np.random.default_rng(1)
    good = _nii(tmp_path / "g2.nii.gz", _good_volume(rng))
    ok = Manifest([Case("x", "liver", "train", "hepatic_cyst", {"T2WI": good})], tmp_path)
    okp = ok.save(tmp_path / "ok.jsonl")
    assert main(["data", "validate", str(okp)]) == 0
    assert "no problems" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "absent.jsonl")]) == 1


def test_organ_masks_and_required_roi_mask(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    vol = np.random.default_rng(0).random((6, 6, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(d / "t2.nii.gz"))
    nib.save(nib.Nifti1Image((vol > 0.5).astype(np.uint8), np.eye(4)), str(d / "liver.nii.gz"))
    cases = [Case("a", "liver", "train", None, {"T2WI": "t2.nii.gz"}, {},
                  {"liver": "liver.nii.gz", "organ": "liver.nii.gz"}),
             Case("b", "liver", "train", None, {"T2WI": "t2.nii.gz"}, {},
                  {"spleen": "liver.nii.gz"})]
    Manifest(cases).save(d / "m.jsonl")
    m = Manifest.load(d / "m.jsonl")
    problems = validate_manifest(m)
    assert problems == ["case 'b': masks.spleen: mask for a modality the case does not have; "
                        "key masks by 'lesion', 'organ', the organ ('liver') or by one of the "
                        "case's modalities"]
    problems = validate_manifest(m, required_masks=["liver"])
    assert any(ln.startswith("case 'b': masks.liver: missing; preprocess.roi_mask is 'liver'")
               for ln in problems), problems
    assert not any("case 'a'" in ln for ln in problems)


def test_region_mask_needs_one_volume_grid_not_all(tmp_path):
    """LLD-MMRI full volumes: the phases lie on different grids and the lesion mask on one of
    them (or on another grid overlapping them, resampled by affine in preprocessing). A mask
    cut on a volume's own grid, or one whose field of view overlaps no volume, is refused."""
    rng = np.random.default_rng(0)

    def nii(name, shape, affine):
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32) + 0.1, affine),
                 str(tmp_path / name))
        return name

    art = np.diag([0.8, 0.8, 2.0, 1.0])
    ven = np.diag([1.0, 1.0, 3.0, 1.0])
    ven[:3, 3] = (1.5, -2.0, 4.0)
    coarse = np.diag([1.6, 1.6, 4.0, 1.0])
    far = coarse.copy()
    far[:3, 3] = 1000.0
    mods = {"C+A": nii("ca.nii.gz", (40, 40, 20), art), "C+V": nii("cv.nii.gz", (32, 32, 14), ven)}
    masks = {"on_art": nii("m_art.nii.gz", (40, 40, 20), art),
             "other_grid": nii("m_coarse.nii.gz", (20, 20, 10), coarse),
             "far": nii("m_far.nii.gz", (20, 20, 10), far),
             "cut": nii("m_cut.nii.gz", (40, 40, 19), art)}
    cases = [Case(k, "liver", "train", None, dict(mods), {}, {"lesion": p})
             for k, p in masks.items()]
    cases.append(Case("own", "liver", "train", None, dict(mods), {},
                      {"C+V": masks["on_art"]}))          # a phase's own mask: its grid only
    m = Manifest.load(Manifest(cases).save(tmp_path / "m.jsonl"))
    problems = validate_manifest(m)
    assert sorted(ln.split(":")[0] for ln in problems) == ["case 'cut'", "case 'far'",
                                                           "case 'own'"], problems
    cut = next(ln for ln in problems if "'cut'" in ln)
    assert "masks.lesion" in cut and "mask shape (40, 40, 19) does not match C+A (40, 40, 20)" \
        in cut and "resample the mask" in cut
    own = next(ln for ln in problems if "'own'" in ln)
    assert "masks.C+V" in own and "does not match C+V (32, 32, 14)" in own


def test_validation_keeps_healthy_checks_for_a_later_process(tmp_path, monkeypatch):
    """With ``memo_dir`` a later process validating the same unchanged files reads none of the
    healthy ones again and reports the same problems; files with a problem, a file changed
    since and an unreadable kept check are read again."""
    import os

    from medmap.data import validate

    p = _write_bad_dataset(tmp_path)
    memo = tmp_path / "cache" / "checks"
    monkeypatch.setattr(validate, "_CHECKED", {})
    first = validate_manifest(Manifest.load(p), memo_dir=memo)
    kept = sorted(memo.rglob("*.json"))
    assert kept and not list(memo.rglob("*.tmp"))
    reads = []
    real = validate._read_check
    monkeypatch.setattr(validate, "_read_check", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(validate, "_CHECKED", {})                 # as in a fresh process
    assert validate_manifest(Manifest.load(p), memo_dir=memo) == first
    names = {os.path.basename(r) for r in reads}
    assert names == {"nope.nii.gz", "cut.nii.gz", "flat.nii.gz", "frames.nii.gz",  # problems only
                     "fived.nii.gz", "nan.nii.gz", "zero.nii.gz", "mask_bad.nii.gz",
                     "mask_ok.nii.gz"}
    assert len(kept) == 2                                         # good and oneframe
    _nii(tmp_path / "good.nii.gz", _good_volume(np.random.default_rng(5), (8, 8, 7)))
    st = (tmp_path / "good.nii.gz").stat()
    os.utime(tmp_path / "good.nii.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    for f in kept:
        f.write_text("{not json")                                 # unreadable: read again
    reads.clear()
    monkeypatch.setattr(validate, "_CHECKED", {})
    again = validate_manifest(Manifest.load(p), memo_dir=memo)
    assert "good.nii.gz" in {os.path.basename(r) for r in reads}
    assert "oneframe.nii.gz" in {os.path.basename(r) for r in reads}
    assert any("mask shape (8, 8, 5) does not match T2WI (8, 8, 7)" in ln for ln in again)
    blocked = tmp_path / "not-a-folder"                            # checks cannot be kept:
    blocked.write_text("a file where the memo folder would go")   # validation still works
    monkeypatch.setattr(validate, "_CHECKED", {})
    assert validate_manifest(Manifest.load(p), memo_dir=blocked / "checks") == again


def test_kept_checks_follow_the_file_and_the_readers(tmp_path, monkeypatch):
    """A kept check is keyed by the file itself, also in a folder whose name holds a ``#``
    next to a folder named like its prefix (not a DICOM series), and by the reader versions:
    another medmap, MONAI, nibabel, pydicom or pynrrd reads the file again."""
    import os

    from medmap.data import validate

    (tmp_path / "run").mkdir()
    (tmp_path / "run#2").mkdir()
    f = tmp_path / "run#2" / "a.nii.gz"
    _nii(f, _good_volume(np.random.default_rng(0)))
    memo = tmp_path / "checks"
    monkeypatch.setattr(validate, "_CHECKED", {})
    assert validate._check_volume(str(f), memo)[0] is None
    bad = _good_volume(np.random.default_rng(1))
    bad[0, 0, 0] = np.nan
    _nii(f, bad)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    monkeypatch.setattr(validate, "_CHECKED", {})                 # a later process
    assert "NaN" in validate._check_volume(str(f), memo)[0]
    _nii(f, _good_volume(np.random.default_rng(2)))
    validate._check_volume(str(f), memo)                          # kept (healthy)
    reads = []
    real = validate._read_check
    monkeypatch.setattr(validate, "_read_check", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(validate, "_CHECKED", {})
    validate._check_volume(str(f), memo)
    assert reads == []
    monkeypatch.setattr(validate, "_reader_versions", lambda: ("another medmap",))
    monkeypatch.setattr(validate, "_CHECKED", {})
    validate._check_volume(str(f), memo)
    assert reads == [str(f)]
