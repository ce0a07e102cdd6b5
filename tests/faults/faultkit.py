"""Shared pieces of the fault suite: a tiny classifier folder, the CLI in a subprocess, and a
way to run a command without write permission even as root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
MODS = ["T2WI", "C+A"]


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for ``python -m medmap.cli`` in a subprocess: offline, the checkout's src
    first, the same intra-op thread count as this process (bitwise-equal training)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def fault_model(tmp_path_factory) -> Path:
    """A tiny untrained liver classifier (T2WI, C+A) saved with save_pretrained, 32^3."""
    from medmap.data.preprocess import PreprocessConfig
    from medmap.data.vocab import get_organ
    from medmap.models.hub import save_pretrained
    from medmap.models.medmap import MedMAPClassifier, MedMAPConfig

    torch.manual_seed(0)
    model = MedMAPClassifier(MedMAPConfig.tiny(MODS, list(get_organ("liver").classes),
                                               organ="liver"))
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "prompt" in name:
                buf.normal_()
    return save_pretrained(model, tmp_path_factory.mktemp("fault-model") / "model",
                           organ="liver",
                           preprocess=PreprocessConfig(spacing=None, size=(32, 32, 32)).to_dict())


def _no_write_prefix() -> list[str] | None:
    """Command prefix under which a 0555 folder is really read-only: none needed for a normal
    user; for root an unprivileged user namespace (``unshare --user``), if the kernel allows."""
    if os.geteuid() != 0:
        return []
    exe = shutil.which("unshare")
    if exe is None:
        return None
    ok = subprocess.run([exe, "--user", sys.executable, "-c", "pass"], capture_output=True)
    return [exe, "--user"] if ok.returncode == 0 else None


@pytest.fixture(scope="session")
def no_write_prefix() -> list[str]:
    prefix = _no_write_prefix()
    if prefix is None:
        pytest.skip("running as root without user namespaces: cannot make a folder read-only")
    return prefix
