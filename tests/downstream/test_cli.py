"""Every downstream CLI command runs on a tiny model and writes its metrics JSON."""

import json

import pytest

from medmap.cli import main


@pytest.mark.parametrize("argv,out_json", [
    (["zeroshot", "--split", "val"], "zeroshot.json"),
    (["retrieve", "--split", "val"], "retrieval.json"),
    (["segment", "--split", "val", "--epochs", "1"], "segment.json"),
    (["generate-report", "--split", "val", "--epochs", "1"], "report_gen.json"),
    (["probe", "--split", "val", "--mode", "linear"], "probe-linear.json"),
    (["probe", "--split", "val", "--mode", "finetune", "--epochs", "1"], "probe-finetune.json"),
    (["embed", "--split", "val"], "embeddings.json"),
])
def test_cli_command_runs(pretrained, tiny_sim, vcache, tmp_path, capsys, argv, out_json):
    rc = main([argv[0], str(pretrained), "--manifest", str(tiny_sim), "--out", str(tmp_path),
               "--cache-dir", vcache, *argv[1:]])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / out_json).read_text())
    assert out_json in capsys.readouterr().out


def test_cli_no_pretraining_uses_the_config(pretrained, tiny_sim, vcache, tmp_path):
    rc = main(["retrieve", "none", "--config", str(pretrained.parent / "config.yaml"),
               "--manifest", str(tiny_sim), "--out", str(tmp_path), "--split", "val",
               "--cache-dir", vcache])
    assert rc == 0
    assert json.loads((tmp_path / "retrieval.json").read_text())["model"] == "no-pretraining"


def test_cli_errors_exit_2(pretrained, tiny_sim, tmp_path, capsys):
    assert main(["zeroshot", "none", "--manifest", str(tiny_sim), "--out", str(tmp_path)]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["retrieve", str(tmp_path), "--manifest", str(tiny_sim),
                 "--out", str(tmp_path)]) == 2
    assert "not a medmap model folder" in capsys.readouterr().err
    assert main(["zeroshot", str(pretrained), "--manifest", str(tiny_sim), "--out",
                 str(tmp_path), "--knowledge", str(tmp_path / "nope.yaml")]) == 2


def test_cli_refuses_an_invalid_manifest_naming_case_and_field(pretrained, tiny_sim, tmp_path,
                                                               capsys):
    from medmap.data.manifest import Manifest

    m = Manifest.load(tiny_sim)
    case = next(c for c in m.cases if c.organ == "liver" and "T2WI" in c.modalities)
    case.modalities["T2WI"] = "missing.nii.gz"
    bad = m.save(str(tiny_sim).replace("manifest.jsonl", "bad-downstream.jsonl"))
    for cmd in ("retrieve", "zeroshot", "embed"):
        assert main([cmd, str(pretrained), "--manifest", str(bad), "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"case {case.case_id!r}: modalities.T2WI" in err and "file not found" in err, err
