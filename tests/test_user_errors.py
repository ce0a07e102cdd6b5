"""Deliberate user-facing errors raised deep inside medmap (training, models, downstream tasks)
reach the ``medmap`` command as one ``error: ...`` line with exit status 2, not as a traceback
flagged as a bug (exit 1): they are :class:`medmap.config.UserError` s."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmap.cli import main


@pytest.fixture(scope="module")
def config_yaml(tiny_experiment_factory, tmp_path_factory) -> Path:
    from medmap.config import save_config

    cfg = tiny_experiment_factory(epochs=(1, 1))
    return save_config(cfg, tmp_path_factory.mktemp("user-errors") / "experiment.yaml")


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "this is a bug" not in err, err
    for n in needles:
        assert n in lines[0], err
    return lines[0]


def test_unknown_ablation_rows(tmp_path, capsys):
    assert main(["ablation", "--rows", "nope", "--out", str(tmp_path / "ab")]) == 2
    _one_error_line(capsys, "unknown ablation rows ['nope']")


def test_demo_full_and_quick(tmp_path, capsys):
    assert main(["demo", "--full", "--quick", "--out", str(tmp_path / "demo")]) == 2
    _one_error_line(capsys, "choose --full or --quick")


@pytest.mark.parametrize("override,needle", [
    pytest.param("model.encoder.out_stage=9", "swin out_stage must be in 1..4", id="out_stage"),
    pytest.param("data.modalities=[T2WI,FLAIR]", "data.modalities ['FLAIR'] are not liver",
                 id="modalities"),
])
def test_finetune_bad_model_or_data_config(config_yaml, tmp_path, capsys, override, needle):
    rc = main(["finetune", "--config", str(config_yaml), "--run-dir", str(tmp_path / "run"),
               override])
    assert rc == 2
    _one_error_line(capsys, needle)


def test_zeroshot_on_a_split_without_labelled_cases(config_yaml, tiny_sim, tmp_path, capsys):
    rc = main(["zeroshot", "none", "--config", str(config_yaml), "--manifest", str(tiny_sim),
               "--split", "nope", "--out", str(tmp_path / "zs")])
    assert rc == 2
    _one_error_line(capsys, "no labelled liver case in split 'nope'")


def test_error_classes_stay_value_errors():
    """Existing ``except ValueError`` / ``pytest.raises(ValueError)`` keep catching them."""
    from medmap.config import UserError
    from medmap.downstream.common import TaskNotApplicable
    from medmap.text.encoder import TextModelNotFoundError
    from medmap.text.knowledge import KnowledgeFileError

    for cls in (TaskNotApplicable, KnowledgeFileError, TextModelNotFoundError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)
    assert issubclass(TextModelNotFoundError, OSError)
