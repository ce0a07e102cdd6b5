"""Read-only output folders: every command that writes says which option and folder, before
any work starts, with exit status 2 and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from faultkit import REPO, cli_env

# runs in a subprocess without write permission: each command's exit status and stderr
_SCRIPT = r"""
import json, sys
from contextlib import redirect_stderr
from io import StringIO
from medmap.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = StringIO()
    with redirect_stderr(err):
        rc = main(argv)
    out.append([rc, err.getvalue()])
print(json.dumps(out))
"""


def test_read_only_output_folder_is_a_clear_error(fault_model, tiny_sim, tmp_path,
                                                  no_write_prefix):
    ro = tmp_path / "read-only"
    ro.mkdir()
    from medmap.data.manifest import Manifest

    case = next(Path(c.modalities["T2WI"]).parent for c in Manifest.load(tiny_sim).resolved()
                if c.organ == "liver" and "T2WI" in c.modalities)
    commands = {
        "predict --out": ["predict", str(fault_model), str(case), "--out", str(ro / "p.csv")],
        "predict --cam": ["predict", str(fault_model), str(case), "--out",
                          str(tmp_path / "p.csv"), "--cam", str(ro / "cams")],
        "evaluate --out": ["evaluate", str(fault_model), "--manifest", str(tiny_sim), "--out",
                           str(ro / "eval")],
        "finetune --run-dir": ["finetune", "--run-dir", str(ro / "run"),
                               f"data.manifest={tiny_sim}"],
        # no pre-check: the write itself fails, and is still one clear line
        "simulate --out": ["data", "simulate", "--out", str(ro / "sim"), "--cases", "1",
                           "--size", "16", "--organs", "brain", "--workers", "1"],
    }
    ro.chmod(0o555)
    try:
        res = subprocess.run([*no_write_prefix, sys.executable, "-c", _SCRIPT,
                              json.dumps(list(commands.values()))], cwd=REPO, env=cli_env(),
                             capture_output=True, text=True, timeout=300)
    finally:
        ro.chmod(0o755)
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout.strip().splitlines()[-1])
    for (name, argv), (rc, err) in zip(commands.items(), results):
        assert rc == 2, f"{name}: exit {rc}\n{err}"
        assert err.startswith("error: ") and "Traceback" not in err, f"{name}:\n{err}"
        assert str(ro) in err and ("Permission denied" in err or "not writable" in err), \
            f"{name}:\n{err}"
        option = name.split()[-1]
        if name != "simulate --out":
            assert option in err and "choose a writable" in err, f"{name}:\n{err}"
    assert list(ro.iterdir()) == []
