"""fp32 against bf16-mixed training steps at the demo's setting (`medmap demo`'s liver model:
CNN experts 16-32-64, conv stream 8-16-32-64, 32^3 lesion crops, 8 phases, batch 8, mask and
region pooling), the same step Lightning runs with ``precision="bf16-mixed"``: the forward
pass and loss under ``torch.autocast(dtype=torch.bfloat16)``, fp32 weights and optimiser.

    python benchmarks/train_precision.py                 # pre-training and fine-tuning steps
    python benchmarks/train_precision.py --quick         # smoke test (seconds)

``--device cuda`` (the default where a GPU is available) times the same steps on the GPU.
Prints seconds per step (median over ``--repeats``, the two precisions interleaved so a
machine's drift hits both) and the speed-up. Whether bf16 keeps the accuracy is a training
question, measured with full runs (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402


def _steps(quick: bool):
    """(name, step function factory) for the demo's pre-training and fine-tuning steps."""
    from medmap.data.vocab import get_organ
    from medmap.demo import DemoSettings, demo_config
    from medmap.models.medmap import MedMAPClassifier, ModalityAwareCLIP
    from medmap.train.engine import OptimConfig, build_adamw
    from medmap.train.medmap import FinetuneModule, PretrainModule

    s = DemoSettings.quick() if quick else DemoSettings()
    cfg = demo_config("liver", Path("unused.jsonl"), Path("unused"), s).model
    organ = get_organ("liver")
    cfg.modalities, cfg.classes, cfg.text_dim = list(organ.modalities), list(organ.classes), 384
    B, M, S = (2, 2, 16) if quick else (s.batch_size, len(cfg.modalities), s.size)
    if quick:
        cfg.modalities = cfg.modalities[:M]
    g = torch.Generator().manual_seed(0)
    oc = OptimConfig(epochs=10, lr=1e-4)
    mask = torch.zeros(B, 1, S, S, S)
    mask[:, :, S // 4: 3 * S // 4, S // 4: 3 * S // 4, S // 4: 3 * S // 4] = 1

    def pretrain_step():
        clip = ModalityAwareCLIP(cfg)
        opt = build_adamw([(clip.named_parameters(), 1.0)], oc, 1000, 100)[0]
        mod = PretrainModule(clip, oc)
        batch = {"image": torch.randn(B, 1, S, S, S, generator=g),
                 "model_modality": torch.zeros(B, dtype=torch.long),
                 "text": torch.randn(B, cfg.text_dim, generator=g)}
        return mod, opt, batch

    def finetune_step():
        model = MedMAPClassifier(cfg)
        opt = build_adamw([(model.named_parameters(), 1.0)], oc, 1000, 100)[0]
        mod = FinetuneModule(model, oc)
        batch = {"images": torch.randn(B, M, 1, S, S, S, generator=g),
                 "present": torch.ones(B, M, dtype=torch.bool),
                 "label": torch.arange(B) % len(cfg.classes),
                 "text": torch.randn(B, cfg.text_dim, generator=g), "mask": mask}
        return mod, opt, batch

    return [("pre-training step", pretrain_step), (f"fine-tuning step ({M} phases)",
                                                   finetune_step)], B


def main(argv: list[str] | None = None) -> dict:
    ap = C.base_parser(__doc__)
    a = ap.parse_args(argv)
    dev = C.setup(a)
    steps, B = _steps(a.quick)
    repeats = 2 if a.quick else (a.repeats or 5)
    # as the engine trains bf16-mixed: on a CPU whose bf16 kernels are wrong on the smallest
    # maps, the convolutions on those maps in fp32 (medmap.train.bf16_guard)
    from medmap.train.bf16_guard import guard_small_maps
    from medmap.train.precision import bf16_fp32_map_edge, native_bf16_cpu

    edge = bf16_fp32_map_edge() if dev.type == "cpu" and native_bf16_cpu() else 0
    rows = []
    for name, factory in steps:
        mod, opt, batch = factory()
        if edge:
            guard_small_maps(mod, edge)
        mod.to(dev)                          # parameters move in place: the optimiser keeps them
        batch = {k: v.to(dev) for k, v in batch.items()}

        def step(bf16: bool):
            ctx = (torch.autocast(dev.type, dtype=torch.bfloat16) if bf16
                   else contextlib.nullcontext())
            with ctx:
                loss = mod.training_step(batch, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times: dict[bool, list[float]] = {False: [], True: []}
        for bf16 in (False, True):          # warm-up both
            step(bf16)
        for _ in range(repeats):             # interleaved
            for bf16 in (False, True):
                times[bf16].append(C.time_fn(lambda: step(bf16), repeats=1, warmup=0,
                                                   device=dev)["mean"])
        fp32, bf = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"step": name, "batch": B, "fp32_s": fp32, "bf16_s": bf,
                     "speedup": fp32 / bf})
    return C.emit("Training step: fp32 against bf16-mixed (the demo's liver model)",
                  ["step", "batch", "fp32 s", "bf16-mixed s", "speed-up"],
                  [[r["step"], r["batch"], f"{r['fp32_s']:.3f}", f"{r['bf16_s']:.3f}",
                    f"{r['speedup']:.2f}x"] for r in rows], a.json,
                  settings={"repeats": repeats, "quick": a.quick, "device": str(dev),
                            "fp32_map_edge": edge,
                            "device_name": (torch.cuda.get_device_name(dev)
                                            if dev.type == "cuda" else "cpu")},
                  extra={"results": rows})


if __name__ == "__main__":
    main()
