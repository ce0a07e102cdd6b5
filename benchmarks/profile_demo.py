"""Where `medmap demo`'s time goes: by stage, then by operator inside the slowest stage.

Stage table: runs the demo (or reads a finished demo's ``summary.json``) and prints wall and CPU
seconds (user + sys, children included) per stage, from ``summary["stages"]``.

Operator table: one fine-tuning epoch of the demo's liver model (its own ``config.yaml``,
initialised from its pre-trained model) under ``torch.profiler`` on the CPU, the operators
sorted by self CPU time, plus the share spent in data loading, validation and checkpointing
(the ``record_function`` ranges Lightning opens).

    python benchmarks/profile_demo.py --out /tmp/demo                 # run the demo, stage table
    python benchmarks/profile_demo.py --out /tmp/demo --reuse          # stage table of a finished run
    python benchmarks/profile_demo.py --out /tmp/demo --reuse --operators 25
    python benchmarks/profile_demo.py --out /tmp/demo --quick          # the quick demo

Nothing here asserts a time; it prints figures (docs/benchmarks.md holds the measured ones).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def stage_table(summary: dict) -> str:
    rows = [[name, f"{v['wall_s']:.0f}", f"{v['cpu_s']:.0f}"]
            for name, v in summary["stages"].items()]
    rows.append(["total (inside the run)", f"{summary['wall_s']:.0f}", f"{summary['cpu_s']:.0f}"])
    return C.markdown_table(["stage", "wall s", "CPU s"], rows)


def operator_table(demo: Path, organ: str, top: int) -> str:
    """Profile one fine-tuning epoch of the demo's ``organ`` model."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from medmap.config import load_config
    from medmap.train.config import ExperimentConfig
    from medmap.train.medmap import finetune

    run = demo / "runs" / organ
    cfg = load_config(ExperimentConfig, run / "finetune" / "config.yaml")
    cfg = copy.deepcopy(cfg)
    cfg.finetune.epochs = 1
    cfg.finetune.progress = False
    with tempfile.TemporaryDirectory() as tmp, \
            profile(activities=[ProfilerActivity.CPU]) as prof:
        finetune(cfg, Path(tmp) / "ft", init=run / "pretrain" / "model", overwrite=True)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranges = {e.key: e.cpu_time_total for e in events}
    lines = [events.table(sort_by="self_cpu_time_total", row_limit=top)]  # averaged once
    lines.append("Lightning ranges (inclusive CPU time, share of the profiled total):")
    for key in sorted(ranges):
        if key.startswith("[") and ("Strategy]" in key or "LightningModule]" in key
                                    or "Callback]" in key or "_DataFetcher" in key):
            share = 100 * ranges[key] / total
            if share >= 0.5:
                lines.append(f"  {share:5.1f}%  {key}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the demo's output folder")
    ap.add_argument("--reuse", action="store_true", help="read OUT/summary.json, do not re-run")
    ap.add_argument("--quick", action="store_true", help="the quick demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--operators", type=int, default=0,
                    help="also profile one fine-tuning epoch by operator (top N rows)")
    ap.add_argument("--organ", default=None,
                    help="the organ whose fine-tuning epoch is profiled (default: the first run)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.reuse:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    else:
        from medmap.demo import run_demo

        summary = run_demo(out, quick=a.quick, seed=a.seed)
    print(stage_table(summary))
    if a.operators:
        organ = a.organ or (summary.get("organs") or ["liver"])[0]
        print(operator_table(out, organ, a.operators))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
