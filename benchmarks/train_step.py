"""Per-step throughput and peak memory of MedMAP's pre-training and fine-tuning steps, against
the bare Swin encoder forward + backward on the same input (the ratio is medmap's overhead).

Steps are the real Lightning modules' ``training_step`` (``PretrainModule`` / ``FinetuneModule``,
called without a Trainer: no logging, no gradient clipping) + ``backward`` + the engine's AdamW
(``build_adamw``). The architecture is ``configs/liver.yaml``'s (Swin depths 2-2-2-2,
window 7, conv stream 16-32-64-96, embed 256, text 384) with the Swin feature size as a knob.

    python benchmarks/train_step.py                                  # the full table
    python benchmarks/train_step.py --sizes 64 --feature-sizes 24     # one row group
    python benchmarks/train_step.py --sizes 128 --feature-sizes 48 --batch 2 --checkpoint \
        --expert-checkpoint --only finetune --warmup 0 --repeats 1    # the 24 GB check
    python benchmarks/train_step.py --sizes 64 --feature-sizes 12 --window 4 --profile
    python benchmarks/train_step.py --quick                           # smoke test (seconds)

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (absolute); on the CPU the process's
peak RSS during the row (absolute, so it includes the model's weights and the interpreter).
``--max-rss-gb`` (default 20) ends the process when its resident memory passes that figure, so
a configuration that does not fit stops before the machine runs out of memory.

Checkpointing: ``--checkpoint`` is MONAI's per-block Swin checkpointing
(``SwinConfig.use_checkpoint``); ``--expert-checkpoint`` recomputes each expert's whole encode
in the backward pass, one expert after another (``MedMAPConfig.expert_checkpoint``). Both
together hold one Swin block's activations at a time.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _optim(model: torch.nn.Module):
    from medmap.train.engine import OptimConfig, build_adamw

    oc = OptimConfig(epochs=10, lr=1e-4)
    return oc, build_adamw([(model.named_parameters(), 1.0)], oc, 1000, 100)[0]


def bench_config(S: int, fs: int, a, dev: torch.device) -> list[dict]:
    """Rows of one (size, feature size) configuration."""
    from medmap.models.encoders import build_encoder
    from medmap.models.medmap import ModalityAwareCLIP
    from medmap.train.medmap import FinetuneModule, PretrainModule

    B, M = a.batch, a.phases
    cfg = C.medmap_config([f"m{i}" for i in range(M)], feature_size=fs, size=S, window=a.window,
                          checkpoint=a.checkpoint, quick=a.quick, dropout=0.1,
                          expert_checkpoint=a.expert_checkpoint)
    g = torch.Generator().manual_seed(0)
    tag = f"{S}^3 fs{fs}" + "".join(t for t, on in ((" ckpt", a.checkpoint),
                                                     (" expert-ckpt", a.expert_checkpoint)) if on)
    rows: list[dict] = []

    def add(name, vols, res, **kw):
        rows.append({"config": tag, "step": name, "volumes": vols, **res,
                     "volumes_per_s": vols / res["mean"], **kw})
        print(f"  {tag:>10} {name:<34} {res['mean']:.3f} s  peak {res['peak_mb']:.0f} MB",
              file=sys.stderr, flush=True)

    x1 = torch.randn(B, 1, S, S, S, generator=g).to(dev)
    want = set(a.only or ["bare", "pretrain", "finetune", "experts"])

    if "bare" in want:
        bare = build_encoder(cfg.encoder).to(dev).train()

        def bare_step():
            bare.zero_grad(set_to_none=True)
            bare(x1).pooled.sum().backward()

        add("bare Swin encoder fwd+bwd", B, C.measure(bare_step, a.repeats, a.warmup, dev),
            params=C.n_params(bare))
        del bare
        _free(dev)

    if "pretrain" in want:
        clip = ModalityAwareCLIP(cfg).to(dev)
        oc, opt = _optim(clip)
        pre = PretrainModule(clip, oc)
        batch = {"image": x1, "model_modality": torch.zeros(B, dtype=torch.long, device=dev),
                 "text": torch.randn(B, cfg.text_dim, generator=g).to(dev)}

        def pre_step():
            loss = pre.training_step(batch, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        add("pre-training step", B, C.measure(pre_step, a.repeats, a.warmup, dev),
            params=C.n_params(clip))
        del clip, opt, pre, batch
        _free(dev)

    if "finetune" in want or "experts" in want:
        model = C.classifier(cfg, g).to(dev)
        xs = torch.randn(B, M, 1, S, S, S, generator=g).to(dev)
        if "finetune" in want:
            oc, opt = _optim(model)
            ft = FinetuneModule(model, oc)
            batch = {"images": xs, "present": torch.ones(B, M, dtype=torch.bool, device=dev),
                     "label": torch.arange(B, device=dev) % len(cfg.classes),
                     "text": torch.randn(B, cfg.text_dim, generator=g).to(dev)}

            def ft_step():
                loss = ft.training_step(batch, 0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            add(f"fine-tuning step ({M} phases)", B * M,
                C.measure(ft_step, a.repeats, a.warmup, dev), params=C.n_params(model))
            if a.profile:
                profile(ft_step, dev, tag)
            del opt, ft, batch
            _free(dev)
        if "experts" in want:
            def experts_only():
                model.zero_grad(set_to_none=True)
                sum(model.experts.encoders[k](xs[:, i]).pooled.sum()
                    for i, k in enumerate(model.experts.encoders)).backward()

            add(f"its {M} Swin experts alone fwd+bwd", B * M,
                C.measure(experts_only, a.repeats, a.warmup, dev),
                params=C.n_params(model.experts.encoders))
        del model, xs
        _free(dev)
    return rows


def profile(fn, dev: torch.device, tag: str, rows: int = 20) -> None:
    """torch.profiler's top operators (self time) of one call, printed to stdout."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with tprofile(activities=acts) as p:
        fn()
        C.sync(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(f"\n### torch.profiler, fine-tuning step, {tag}\n")
    print(p.key_averages().table(sort_by=key, row_limit=rows))


def main(argv: list[str] | None = None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="cube sides")
    ap.add_argument("--feature-sizes", type=int, nargs="+", default=[24, 48],
                    help="Swin feature sizes (paper: 48)")
    ap.add_argument("--batch", type=int, default=2, help="pairs / cases per step")
    ap.add_argument("--phases", type=int, default=8, help="modalities per case (liver: 8)")
    ap.add_argument("--window", type=int, default=7, help="Swin window (paper: 7)")
    ap.add_argument("--checkpoint", action="store_true",
                    help="activation checkpointing in the Swin blocks (SwinConfig.use_checkpoint)")
    ap.add_argument("--expert-checkpoint", action="store_true",
                    help="checkpoint each expert's whole encode (MedMAPConfig.expert_checkpoint)")
    ap.add_argument("--max-rss-gb", type=float, default=20.0,
                    help="stop the process when its resident memory passes this (CPU; 0: off)")
    ap.add_argument("--only", nargs="+", choices=["bare", "pretrain", "finetune", "experts"],
                    help="run only these rows")
    ap.add_argument("--profile", action="store_true",
                    help="print torch.profiler's top operators of one fine-tuning step")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.feature_sizes, a.phases = [32], [12], 2
        a.repeats = a.repeats or 1     # warm-up 1: first calls are not steady
    a.repeats = a.repeats or 3
    dev = C.setup(a)

    rows: list[dict] = []
    with C.RSSGuard(a.max_rss_gb or None, label="train_step.py") as guard:
        for S in a.sizes:
            for fs in a.feature_sizes:
                rows += bench_config(S, fs, a, dev)

    table, ratios = [], []
    for r in rows:
        table.append([r["config"], r["step"], r["mean"], r["volumes_per_s"], r["peak_mb"],
                      r["params"] / 1e6])
    for cfg_tag in dict.fromkeys(r["config"] for r in rows):
        by = {r["step"].split(" ")[0]: r for r in rows if r["config"] == cfg_tag}
        if "fine-tuning" in by and "its" in by:
            ratios.append([cfg_tag, "fine-tune step / its experts alone",
                           by["fine-tuning"]["mean"] / by["its"]["mean"]])
        if "pre-training" in by and "bare" in by:
            ratios.append([cfg_tag, "pre-training step / bare encoder",
                           by["pre-training"]["mean"] / by["bare"]["mean"]])
    settings = {"batch": a.batch, "phases": a.phases, "window": a.window,
                "checkpoint": a.checkpoint, "expert_checkpoint": a.expert_checkpoint,
                "repeats": a.repeats, "warmup": a.warmup, "quick": a.quick,
                "max_rss_sampled_gb": round(guard.max_gb, 2)}
    payload = C.emit("Training step: throughput and peak memory",
                     ["config", "step", "s/step", "volumes/s", "peak memory (MB)",
                      "params (M)"], table, None, settings, device=dev)
    print()
    print(C.markdown_table(["config", "overhead ratio", "x"], ratios))
    print("target: fine-tune step <= 1.3x its encoders alone")
    payload["ratios"] = ratios
    payload["raw"] = rows
    if a.json:
        import json

        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        print(f"\nwrote {a.json}")
    return payload


if __name__ == "__main__":
    main()
