"""GPU efficiency of MedMAP's training steps: bf16 autocast, with / without ``torch.compile`` and
``channels_last_3d``; model FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``),
achieved TFLOP/s and the share of the GPU's dense bf16 peak. Target: >= 40% of peak on an
H100-class GPU.

    python benchmarks/gpu.py                    # 128^3, Swin fs48, fine-tune batch 2 x 8 phases,
                                                # pre-train batch 8: the paper setting
    python benchmarks/gpu.py --quick            # 64^3, same model, fewer repeats: < ~5 min on H200
    python benchmarks/gpu.py --variants eager compile --stages finetune
    python benchmarks/gpu.py --quick --cpu-flops   # no GPU: FLOP count + fp32 eager timing on
                                                   # the CPU at toy size (tests the script)
    python benchmarks/gpu.py --stages finetune --variants eager --checkpoint \
        --expert-checkpoint                        # the 24 GB check: max_memory_allocated

Without CUDA (and without ``--cpu-flops``) it prints a message and exits 0.

Steps are the real ``PretrainModule`` / ``FinetuneModule`` ``training_step`` under
``torch.autocast("cuda", torch.bfloat16)`` (what Lightning's ``bf16-mixed`` does), backward
and the engine's AdamW. ``compile`` compiles every Swin expert, conv stream and CCT block
(``nn.Module.compile``): the models' Python-level loops over modalities and their data-dependent
checks stay eager, and all experts share one compiled graph. FLOPs are counted once per stage
in eager mode (forward + backward; the optimiser's element-wise work is not counted), so
"achieved" is model FLOPs / wall time (MFU).
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of the device name.
# More specific names first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),      # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L4", 121.0),
]


def peak_bf16_tflops(name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by name; None when unknown (printed as N/A)."""
    if not name:
        return None
    for key, val in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return val
    return None


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    return int(fc.get_total_flops())


def _compile_parts(model: torch.nn.Module) -> None:
    """Compile the heavy sub-modules in place (experts, conv streams, CCT blocks)."""
    parts = list(model.experts.encoders.values())
    parts += list(getattr(model, "conv_stream", {}).values())
    parts += list(getattr(model, "cct", []))
    for m in parts:
        m.compile()


def build_step(stage: str, variant: str, a, dev: torch.device, amp: bool):
    """(step function, volumes per step, model) of one stage + variant."""
    from medmap.models.medmap import ModalityAwareCLIP
    from medmap.train.engine import OptimConfig, build_adamw
    from medmap.train.medmap import FinetuneModule, PretrainModule

    S = a.size
    cfg = C.medmap_config([f"m{i}" for i in range(a.phases)], feature_size=a.feature_size,
                          size=S, window=a.window, checkpoint=a.checkpoint, quick=a.toy,
                          expert_checkpoint=a.expert_checkpoint)
    g = torch.Generator().manual_seed(0)
    cl = "channels_last" in variant
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    oc = OptimConfig(epochs=10)
    if stage == "pretrain":
        B = a.pretrain_batch
        model = ModalityAwareCLIP(cfg).to(dev)
        x = torch.randn(B, 1, S, S, S, generator=g).to(dev).contiguous(memory_format=fmt)
        batch = {"image": x, "model_modality": torch.zeros(B, dtype=torch.long, device=dev),
                 "text": torch.randn(B, cfg.text_dim, generator=g).to(dev)}
        module, vols = PretrainModule(model, oc), B
    else:
        B = a.finetune_batch
        model = C.classifier(cfg, g).to(dev)
        batch = {"images": torch.randn(B, a.phases, 1, S, S, S, generator=g).to(dev),
                 "present": torch.ones(B, a.phases, dtype=torch.bool, device=dev),
                 "label": torch.arange(B, device=dev) % len(cfg.classes),
                 "text": torch.randn(B, cfg.text_dim, generator=g).to(dev)}
        module, vols = FinetuneModule(model, oc), B * a.phases
    if cl:
        model.to(memory_format=torch.channels_last_3d)
    if "compile" in variant:
        _compile_parts(model)
    opt = build_adamw([(model.named_parameters(), 1.0)], oc, 1000, 100)[0]
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp else \
        contextlib.nullcontext

    def step():
        with ctx():
            loss = module.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, vols, model


def main(argv: list[str] | None = None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--feature-size", type=int, default=48)
    ap.add_argument("--window", type=int, default=7)
    ap.add_argument("--phases", type=int, default=8)
    ap.add_argument("--finetune-batch", type=int, default=2)
    ap.add_argument("--pretrain-batch", type=int, default=8)
    ap.add_argument("--checkpoint", action="store_true",
                    help="MONAI's per-block Swin checkpointing (SwinConfig.use_checkpoint)")
    ap.add_argument("--expert-checkpoint", action="store_true",
                    help="checkpoint each expert's whole encode (MedMAPConfig.expert_checkpoint)")
    ap.add_argument("--stages", nargs="+", choices=["pretrain", "finetune"],
                    default=["pretrain", "finetune"])
    ap.add_argument("--variants", nargs="+",
                    choices=["eager", "eager+channels_last", "compile",
                             "compile+channels_last"],
                    default=["eager", "eager+channels_last", "compile", "compile+channels_last"])
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="override the GPU's dense bf16 peak (TFLOP/s)")
    ap.add_argument("--cpu-flops", action="store_true",
                    help="without CUDA: count FLOPs and time fp32 eager steps on the CPU")
    a = ap.parse_args(argv)
    a.toy = False
    cuda = torch.cuda.is_available() and a.device != "cpu"
    if not cuda and not a.cpu_flops:
        print("gpu.py: CUDA is not available; skipping (use --cpu-flops to count FLOPs on the "
              "CPU at toy size).")
        return {"skipped": True}
    if a.quick:
        if cuda:
            a.size, a.repeats = 64, a.repeats or 3
        else:
            a.size, a.phases, a.feature_size, a.toy = 32, 2, 12, True
            a.finetune_batch, a.pretrain_batch, a.repeats, a.warmup = 1, 2, a.repeats or 1, 0
    a.repeats = a.repeats or 5
    if not cuda:
        a.device = "cpu"
        a.variants = ["eager"]
    dev = C.setup(a)
    gpu = torch.cuda.get_device_name(dev) if cuda else None
    peak = a.peak_tflops or peak_bf16_tflops(gpu)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        import torch._dynamo as dynamo

        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, 64)

    rows, raw = [], []
    t_start = time.perf_counter()
    stopped = None

    def _stop(signum, frame):                   # `timeout` sends SIGTERM: keep what was measured
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        for stage in a.stages:
            _run_stage(stage, a, dev, cuda, peak, rows, raw)
    except KeyboardInterrupt:
        stopped = "stopped early (SIGTERM / Ctrl-C): the rows measured so far"
        print(f"  {stopped}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    settings = {"gpu": gpu or "none (cpu)", "peak_bf16_tflops": peak if peak else "N/A",
                "size": a.size, "feature_size": a.feature_size, "phases": a.phases,
                "finetune_batch": a.finetune_batch, "pretrain_batch": a.pretrain_batch,
                "checkpoint": a.checkpoint, "expert_checkpoint": a.expert_checkpoint,
                "repeats": a.repeats, "quick": a.quick,
                "total_s": round(time.perf_counter() - t_start, 1)}
    if stopped:
        settings["stopped"] = stopped
    return C.emit("GPU efficiency: bf16 steps, torch.compile, channels_last_3d",
                  ["stage", "variant", "s/step", "volumes/s", "TFLOP/step",
                   "achieved TFLOP/s", "% of peak bf16", "peak memory (GB)"],
                  rows, a.json, settings,
                  notes=["\ntarget: >= 40% of peak bf16 on an H100-class GPU"],
                  extra={"raw": raw}, device=dev)


def _run_stage(stage: str, a, dev, cuda: bool, peak: float | None, rows: list,
               raw: list) -> None:
    """Count one stage's FLOPs once (eager, under the same autocast as the timed steps), then
    time each variant. A failure (a compile error, running out of memory) becomes that row's
    error and the next row runs; without a FLOP count the rows keep their times."""
    try:
        step, vols, model = build_step(stage, "eager", a, dev, amp=cuda)
        step()                                   # materialise optimiser state first
        flops = count_flops(step)
        del step, model
    except Exception as e:
        print(f"  {stage}: FLOP count FAILED {type(e).__name__}: {e}"[:400], file=sys.stderr)
        raw.append({"stage": stage, "variant": "flop count", "error": repr(e)[:2000]})
        flops = None
    finally:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    tflop = flops / 1e12 if flops else None
    for variant in a.variants:
        t0 = time.perf_counter()
        try:
            step, vols, model = build_step(stage, variant, a, dev, amp=cuda)
            warm = max(a.warmup, 2) if "compile" in variant else a.warmup
            r = C.measure(step, a.repeats, warm, dev)
        except Exception as e:  # e.g. a compile failure: report it, go on
            print(f"  {stage} {variant}: FAILED {type(e).__name__}: {e}"[:400], file=sys.stderr)
            rows.append([stage, variant, None, None, tflop, None, None, None])
            raw.append({"stage": stage, "variant": variant, "error": repr(e)[:2000]})
            continue
        finally:
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        achieved = flops / r["mean"] / 1e12 if flops else None
        util = 100 * achieved / peak if peak and achieved else None
        rows.append([stage, variant + (" (bf16)" if cuda else " (fp32 cpu)"), r["mean"],
                     vols / r["mean"], tflop, achieved, util, r["peak_mb"] / 1024])
        raw.append({"stage": stage, "variant": variant, "flops": flops, **r,
                    "achieved_tflops": achieved, "utilisation_pct": util,
                    "wall_incl_warmup_s": time.perf_counter() - t0})
        print(f"  {stage} {variant}: {r['mean']:.4f} s/step"
              + (f", {achieved:.2f} TFLOP/s" if achieved else "")
              + f" ({time.perf_counter() - t0:.0f} s incl. warm-up/compile)",
              file=sys.stderr, flush=True)
        del step, model


if __name__ == "__main__":
    main()
