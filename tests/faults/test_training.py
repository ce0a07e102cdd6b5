"""Training runs through the CLI under faults: ``kill -9`` mid-run then ``--resume`` (equal
to an uninterrupted run), a run folder that already holds a run, and a checkpoint that is
not weights-only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from medmap.cli import main

from faultkit import REPO, cli_env

EPOCHS = 5


@pytest.fixture(scope="module")
def config_yaml(tiny_experiment_factory, tmp_path_factory) -> Path:
    from medmap.config import save_config

    cfg = tiny_experiment_factory(epochs=(1, EPOCHS))
    return save_config(cfg, tmp_path_factory.mktemp("fault-train") / "finetune.yaml")


@pytest.fixture(scope="module")
def full_run(config_yaml, tmp_path_factory) -> Path:
    """An uninterrupted fine-tuning run (through the CLI, in this process)."""
    run = tmp_path_factory.mktemp("full") / "run"
    assert main(["finetune", "--config", str(config_yaml), "--run-dir", str(run)]) == 0
    return run


def _weights(run: Path) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def test_kill_9_then_resume_equals_an_uninterrupted_run(config_yaml, full_run, tmp_path,
                                                        capsys):
    run = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "medmap.cli", "finetune", "--config",
                             str(config_yaml), "--run-dir", str(run)], cwd=REPO, env=cli_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)                     # kill -9, mid-way through the run
    proc.wait(timeout=30)
    log.seek(0)
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself first:\n{log.read()}"
    assert last.exists() and not (run / "model").exists(), "killed before / after the run"
    # resuming is the only way on: a plain restart is refused, --resume continues
    assert main(["finetune", "--config", str(config_yaml), "--run-dir", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["finetune", "--config", str(config_yaml), "--run-dir", str(run),
                 "--resume"]) == 0
    a, b = _weights(full_run), _weights(run)
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff < 1e-6, diff
    assert json.loads((run / "run_info.json").read_text())["resumed"] is True


def test_existing_run_folder_needs_resume_or_overwrite(config_yaml, full_run, tmp_path, capsys):
    run = tmp_path / "again"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("epoch000.ckpt", "epoch003.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"an earlier run")
    (run / "run_info.json").write_text("{}")
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    started = tmp_path / "failed-start"         # only config.yaml / run_info.json: reused
    started.mkdir()
    (started / "run_info.json").write_text("{}")
    assert main(["finetune", "--config", str(config_yaml), "--run-dir", str(started),
                 "data.manifest=''"]) == 2
    assert "data.manifest is empty" in capsys.readouterr().err
    assert main(["finetune", "--config", str(config_yaml), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --run-dir") and "already holds a run" in err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before      # left untouched
    assert main(["pretrain", "--config", str(config_yaml), "--run-dir", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["finetune", "--config", str(config_yaml), "--run-dir", str(run), "--resume",
                 "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["finetune", "--config", str(config_yaml), "--run-dir", str(run), "--overwrite",
                 "finetune.epochs=1"]) == 0
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "epoch003.ckpt" not in ckpts and "epoch000.ckpt" not in ckpts, ckpts  # old run: gone
    assert (run / "checkpoints" / "last.ckpt").read_bytes() != before
    assert (run / "model" / "model.safetensors").is_file()


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_never_unpickles_a_checkpoint(config_yaml, full_run, tmp_path, capsys,
                                             monkeypatch):
    """A last.ckpt holding arbitrary Python objects is refused even where the process default
    allows unpickling (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1): every load pins weights_only."""
    import shutil

    import torch

    run = tmp_path / "evil"
    shutil.copytree(full_run, run)
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": _Payload(marker)}, run / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    rc = main(["finetune", "--config", str(config_yaml), "--run-dir", str(run), "--resume"])
    err = capsys.readouterr().err
    assert not marker.exists(), "the checkpoint's pickle ran code"
    assert rc == 2 and "refused to load a checkpoint" in err, err
