"""A training command's stderr carries the run's own lines, not third-party tips, hardware
inventories or deprecation warnings (checked in a fresh process, as a user runs it)."""

import os
import subprocess
import sys

from medmap.config import save_config

NOISE = ("Tip", "litlogger", "LeafSpec", "DeprecationWarning", "FutureWarning",
         "GPU available", "TPU available")


def test_pretrain_stderr_holds_no_third_party_noise(tiny_experiment, tmp_path):
    cfg = tiny_experiment
    cfg.pretrain.epochs = 1
    cfg.pretrain.progress = False
    yaml_path = save_config(cfg, tmp_path / "exp.yaml")
    env = {**os.environ, "PYTHONWARNINGS": "default"}     # show what a plain run would show
    proc = subprocess.run([sys.executable, "-m", "medmap.cli", "pretrain", "--config",
                           str(yaml_path), "--run-dir", str(tmp_path / "pre")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [ln for ln in proc.stderr.splitlines() if any(n in ln for n in NOISE)]
    assert not found, "third-party noise on stderr:\n" + "\n".join(found)
    assert (tmp_path / "pre" / "model" / "model.safetensors").exists()
