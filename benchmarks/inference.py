"""Inference cost: seconds per 8-phase liver case and peak memory of a ``MedMAPClassifier`` forward
(no gradient), paper-size model (``configs/liver.yaml``: Swin feature size 48, window 7) at 128^3.

    python benchmarks/inference.py                              # fs48, 128^3, 1 case per call
    python benchmarks/inference.py --feature-sizes 24 48 --batch 1 4
    python benchmarks/inference.py --bf16                       # bf16 autocast (GPU)
    python benchmarks/inference.py --quick                      # smoke test (seconds)

Peak memory: CUDA ``max_memory_allocated`` or the process's peak RSS during the timed calls
(absolute: it includes the weights). Preprocessing is not included (see data_pipeline.py).
"""

from __future__ import annotations

import contextlib
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--phases", type=int, default=8)
    ap.add_argument("--feature-sizes", type=int, nargs="+", default=[48])
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="cases per forward")
    ap.add_argument("--window", type=int, default=7)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.phases, a.feature_sizes, a.batch = 32, 2, [12], [1]
        a.repeats = a.repeats or 1     # warm-up 1: first calls are not steady
    a.repeats = a.repeats or 3
    dev = C.setup(a)

    from medmap.models.medmap import MedMAPClassifier

    rows, raw = [], []
    for fs in a.feature_sizes:
        cfg = C.medmap_config([f"m{i}" for i in range(a.phases)], feature_size=fs, size=a.size,
                              window=a.window, quick=a.quick)
        model = MedMAPClassifier(cfg, torch.randn(a.phases, cfg.text_dim)).to(dev).eval()
        for B in a.batch:
            x = torch.randn(B, a.phases, 1, a.size, a.size, a.size, device=dev)
            present = torch.ones(B, a.phases, dtype=torch.bool, device=dev)
            amp = (torch.autocast(dev.type, dtype=torch.bfloat16) if a.bf16
                   else contextlib.nullcontext())

            def fwd():
                with torch.inference_mode(), amp:
                    model(x, present)["probs"].float().cpu()

            r = C.measure(fwd, a.repeats, a.warmup, dev)
            rows.append([f"fs{fs}", B, r["mean"], r["mean"] / B, r["peak_mb"],
                         C.n_params(model) / 1e6])
            raw.append({"feature_size": fs, "batch": B, **r})
            del x
            gc.collect()
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    settings = {"size": a.size, "phases": a.phases, "window": a.window, "bf16": a.bf16,
                "repeats": a.repeats, "quick": a.quick}
    return C.emit("Inference: MedMAPClassifier forward, no grad",
                  ["model", "cases/call", "s/call", "s/case", "peak memory (MB)", "params (M)"],
                  rows, a.json, settings, extra={"raw": raw}, device=dev)


if __name__ == "__main__":
    main()
