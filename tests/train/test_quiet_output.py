"""A training command's stderr carries the run's own lines, not third-party tips, hardware
inventories or deprecation warnings (checked in a fresh process, as a user runs it)."""

import os
import subprocess
import sys

from medmap.config import save_config

NOISE = ("Tip", "litlogger", "LeafSpec", "DeprecationWarning", "FutureWarning",
         "GPU available", "TPU available", "logging interval")


def _run(args, env):
    proc = subprocess.run([sys.executable, "-m", "medmap.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [ln for ln in proc.stderr.splitlines() if any(n in ln for n in NOISE)]
    assert not found, f"third-party noise on the stderr of {args[0]}:\n" + "\n".join(found)


def test_pretrain_and_finetune_stderr_hold_no_third_party_noise(tiny_experiment, tmp_path):
    cfg = tiny_experiment
    cfg.pretrain.epochs = 1
    cfg.pretrain.progress = False
    yaml_path = save_config(cfg, tmp_path / "exp.yaml")
    env = {**os.environ, "PYTHONWARNINGS": "default"}     # show what a plain run would show
    _run(["pretrain", "--config", str(yaml_path), "--run-dir", str(tmp_path / "pre")], env)
    assert (tmp_path / "pre" / "model" / "model.safetensors").exists()
    _run(["finetune", "--config", str(yaml_path), "finetune.epochs=1", "finetune.progress=false",
          "--init", str(tmp_path / "pre" / "model"), "--run-dir", str(tmp_path / "ft")], env)
    assert (tmp_path / "ft" / "model" / "model.safetensors").exists()


def test_every_training_process_applies_the_filters():
    """Warning filters are per process: the module's setup (run in each process ddp_spawn
    starts) applies medmap's, so spawned ranks stay as quiet as the main process."""
    import warnings

    import torch

    from medmap.train.engine import OptimConfig
    from medmap.train.modules import TrainModule

    module = TrainModule(torch.nn.Linear(2, 1), None, OptimConfig())
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()                       # a fresh process: no filters yet
        warnings.simplefilter("always")
        module.setup("fit")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
    assert not [w for w in seen if "LeafSpec" in str(w.message)]
