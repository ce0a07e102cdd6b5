"""Bad inputs through the CLI: unreadable, truncated, NaN, zero-variance, 4D and 2D volumes at
``predict`` and ``evaluate``; a model folder whose config.json was edited. Each is one
``error:`` message (exit 2) that names the case, the modality and the fix; never a
traceback."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmap.cli import main
from medmap.data.manifest import Case, Manifest

# kind -> (what the message says, the fix it names)
KINDS = {
    "unreadable": ("unreadable or truncated", "re-export or re-copy the file"),
    "truncated": ("unreadable or truncated", "re-export or re-copy the file"),
    "truncated_gz": ("unreadable or truncated", "re-export or re-copy the file"),
    "nan": ("NaN", "re-export"),
    "constant": ("constant volume", "re-export it or remove the modality from the case"),
    "frames4d": ("expected a 3D volume", "split multi-frame series into one 3D file per volume"),
    "slice2d": ("2D image", "stack the slices into one 3D file"),
}


def _write_bad(kind: str, path: Path, good: Path) -> None:
    rng = np.random.default_rng(0)
    if kind == "unreadable":
        path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    elif kind in ("truncated", "truncated_gz"):   # half of a .nii, or of a .nii.gz
        raw = good.read_bytes() if kind == "truncated" else gzip.compress(good.read_bytes())
        path.write_bytes(raw[: len(raw) // 2])
    else:
        arr = {"nan": None, "constant": np.full((24, 24, 24), 7.0),
               "frames4d": rng.random((24, 24, 24, 3)), "slice2d": rng.random((24, 24))}[kind]
        if arr is None:
            arr = rng.random((24, 24, 24))
            arr[3, 4, 5] = np.nan
        nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), np.eye(4)), str(path))


@pytest.fixture(scope="module")
def bad_cases(tiny_sim, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """One case folder per kind (a bad T2WI next to a good C+A) and a manifest of them."""
    root = tmp_path_factory.mktemp("bad-volumes")
    src = next(c for c in Manifest.load(tiny_sim).resolved()
               if c.organ == "liver" and {"T2WI", "C+A"} <= set(c.modalities))
    folders, cases = {}, []
    ext = "".join(Path(src.modalities["T2WI"]).suffixes)    # the simulator's: .nii
    for kind in KINDS:
        d = root / kind
        d.mkdir()
        shutil.copy(src.modalities["C+A"], d / f"C+A{ext}")
        bad = f"T2WI{'.nii.gz' if kind == 'truncated_gz' else ext}"
        _write_bad(kind, d / bad, Path(src.modalities["T2WI"]))
        folders[kind] = d
        cases.append(Case(kind, "liver", "test", src.label,
                          {"T2WI": f"{kind}/{bad}", "C+A": f"{kind}/C+A{ext}"}))
    return Manifest(cases).save(root / "bad.jsonl"), folders


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", list(KINDS))
def test_predict_bad_volume_in_a_case_folder(kind, bad_cases, fault_model, tmp_path, capsys):
    _, folders = bad_cases
    assert main(["predict", str(fault_model), str(folders[kind]), "--out",
                 str(tmp_path / "p.csv")]) == 2
    err = _error(capsys)
    what, fix = KINDS[kind]
    assert f"case {kind!r}, modality T2WI" in err and what in err and fix in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_bad_volumes_in_a_manifest_are_all_listed(command, bad_cases, fault_model, tmp_path,
                                                  capsys):
    manifest, _ = bad_cases
    argv = (["predict", str(fault_model), str(manifest), "--out", str(tmp_path / "p.csv")]
            if command == "predict" else
            ["evaluate", str(fault_model), "--manifest", str(manifest), "--out",
             str(tmp_path / "eval"), "--n-boot", "10"])
    assert main(argv) == 2
    err = _error(capsys)
    assert f"{len(KINDS)} problems in manifest" in err
    for kind, (what, fix) in KINDS.items():
        line = next((ln for ln in err.splitlines() if f"case {kind!r}" in ln), None)
        assert line is not None, f"{kind} not named:\n{err}"
        assert "modalities.T2WI" in line and what in line and fix in line, line


# ---- a model folder whose config.json was edited -------------------------------------------
@pytest.mark.parametrize("edit,says", [
    (lambda d: d["config"]["conv_stream"].update(channels=[8, 16, 32]),
     "config.json does not match model.safetensors"),
    (lambda d: d["config"].update(modalities=["T2WI", "C+A", "DWI"]),
     "config.json does not match model.safetensors"),
    (lambda d: d.update(model_type="medmap_clip"),
     "holds a 'medmap_clip' model, expected 'medmap_classifier'"),
], ids=["conv-width", "modalities", "model-type"])
def test_edited_model_folder_is_a_clear_error(edit, says, fault_model, tiny_sim, tmp_path,
                                              capsys):
    folder = tmp_path / "model"
    shutil.copytree(fault_model, folder)
    doc = json.loads((folder / "config.json").read_text())
    edit(doc)
    (folder / "config.json").write_text(json.dumps(doc))
    case = next(Path(c.modalities["T2WI"]).parent for c in Manifest.load(tiny_sim).resolved()
                if c.organ == "liver" and "T2WI" in c.modalities)
    for argv in (["predict", str(folder), str(case), "--out", str(tmp_path / "p.csv")],
                 ["evaluate", str(folder), "--manifest", str(tiny_sim), "--out",
                  str(tmp_path / "eval")]):
        assert main(argv) == 2, argv
        err = _error(capsys)
        assert str(folder) in err and says in err, err
        assert "restore" in err or "fine-tuned classifier" in err, err
