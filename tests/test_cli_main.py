"""The ``medmap`` command itself: every option documented, user errors as one line (exit 2),
internal bugs with their traceback (exit 1), unlabelled evaluation without a traceback."""

from __future__ import annotations

import argparse
import json

import pytest

from medmap import cli
from medmap.cli import build_parser, main
from medmap.config import ConfigError
from medmap.data.io import VolumeReadError
from medmap.data.manifest import ManifestError


def _walk(parser: argparse.ArgumentParser, path: str = "medmap"):
    """(command path, action) for every action of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_of_every_command_has_help():
    actions = list(_walk(build_parser()))
    assert len(actions) > 80                      # the walk reaches every sub-command
    missing = [f"{path}: {'/'.join(a.option_strings) or a.dest}" for path, a in actions
               if not (a.help and a.help.strip()) or a.help == argparse.SUPPRESS]
    assert missing == [], "options without a help text:\n" + "\n".join(missing)


def test_help_texts_show_in_usage(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "--series UID" in out and "--device" in out and "cuda" in out


def _fake_command(monkeypatch, exc: BaseException):
    def boom(a):
        raise exc

    real = build_parser

    def parser():
        p = real()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                action.choices["demo"].set_defaults(func=boom)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)


@pytest.mark.parametrize("exc", [
    pytest.param(ConfigError("finetune.epochs: expected int"), id="ConfigError"),
    pytest.param(ManifestError(["case 'a': label: bad; fix it"], "m.jsonl"), id="ManifestError"),
    pytest.param(VolumeReadError("a.nii.gz: unreadable; re-export"), id="VolumeReadError"),
    pytest.param(FileNotFoundError("config file x.yaml not found"), id="FileNotFoundError"),
    pytest.param(PermissionError(13, "Permission denied", "/ro/preds.csv"), id="PermissionError"),
])
def test_user_errors_are_one_line_exit_2(monkeypatch, capsys, exc):
    _fake_command(monkeypatch, exc)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err


def test_predict_input_error_and_model_folder_error_are_user_errors():
    from medmap.config import UserError
    from medmap.models.hub import ModelFolderError
    from medmap.predict import PredictInputError

    for cls in (PredictInputError, ModelFolderError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("exc", [ValueError("operands could not be broadcast"),
                                 TypeError("'NoneType' object is not subscriptable"),
                                 KeyError("x"), RuntimeError("shape mismatch")],
                         ids=lambda e: type(e).__name__)
def test_internal_bugs_show_the_traceback_exit_1(monkeypatch, capsys, exc):
    _fake_command(monkeypatch, exc)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in boom" in err
    assert "this is a bug in medmap" in err.splitlines()[-1]


# ---- evaluate on a split without labels --------------------------------------------------
def test_evaluate_unlabelled_split_prints_no_traceback(tmp_path, capsys):
    import torch

    from medmap.data.manifest import Manifest
    from medmap.data.preprocess import PreprocessConfig
    from medmap.data.sim import simulate
    from medmap.data.vocab import get_organ
    from medmap.models.hub import save_pretrained
    from medmap.models.medmap import MedMAPClassifier, MedMAPConfig

    simulate(tmp_path / "sim", cases=3, size=32, seed=0, organs=("liver",), workers=1)
    m = Manifest.load(tmp_path / "sim" / "manifest.jsonl")
    for c in m.cases:
        c.split, c.label = "test", None
    unlabelled = m.save(tmp_path / "sim" / "unlabelled.jsonl")
    torch.manual_seed(0)
    model = MedMAPClassifier(MedMAPConfig.tiny(["T2WI", "C+A"], list(get_organ("liver").classes),
                                               organ="liver"))
    save_pretrained(model, tmp_path / "run" / "model", organ="liver",
                    preprocess=PreprocessConfig(spacing=None, size=(32, 32, 32)).to_dict())
    rc = main(["evaluate", str(tmp_path / "run"), "--manifest", str(unlabelled), "--split",
               "test", "--n-boot", "10", "--n-cam-cases", "0", "--no-localise"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "Traceback" not in cap.err
    assert "test: n=3 case(s), none labelled: no classification metrics" in cap.out
    doc = json.loads((tmp_path / "run" / "eval-test" / "metrics.json").read_text())
    assert doc["metrics"] is None and len(doc["cases"]) == 3
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "3 case(s), 0 labelled" in card and "No labelled case" in card
