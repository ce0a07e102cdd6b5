"""Inference cost of a ``MedMAPClassifier``: seconds per 8-phase liver case, peak memory and the
change in the predicted probabilities, eager against the fast paths side by side. Paper-size
model (``configs/liver.yaml``: Swin feature size 48, window 7) at 128^3.

    python benchmarks/inference.py                              # fs48, 128^3, default variants
    python benchmarks/inference.py --variants eager fast --repeats 2
    python benchmarks/inference.py --variants eager fast compile --size 64
    python benchmarks/inference.py --feature-sizes 24 48 --batch 1 4
    python benchmarks/inference.py --quick                      # smoke test (seconds)

Variants (each on its own copy of the same weights, same input):

* ``eager``: ``model(x, present)`` under ``torch.inference_mode`` in fp32 - the reference every
  other row is compared with (this was the only row before the fast path);
* ``eager-no-grad``: the same under ``torch.no_grad`` (what ``medmap predict`` used to do);
* ``monai-flash``: MONAI's own ``WindowAttention.use_flash_attention`` switch (SDPA with the
  bias and mask expanded to every window);
* ``fast``: ``medmap.fastpath.fast_classifier(model)`` - fused window attention with the bias and
  mask added per chunk of windows, shifted-window masks shared by the experts, inference mode
  (``medmap predict``'s default);
* ``fast+channels_last``: the same with the conv streams in ``channels_last_3d``;
* ``fast+bf16``: the same with experts and conv streams in bf16 autocast;
* ``compile`` (not in the defaults: minutes of compilation): the fast path with every expert and
  conv stream ``torch.compile``d.

Columns: seconds per call and per case, speed-up over ``eager``, the process's peak memory
during the row (CUDA ``max_memory_allocated`` or peak RSS: absolute, it includes the weights),
and the largest |delta probability| / |delta logit| against ``eager``. The head's weights are
scaled (``--logit-scale``, default 5) so that the class probabilities spread as a trained
model's do: with random weights they are near-uniform and any delta looks small. Preprocessing is
not included (see data_pipeline.py).
"""

from __future__ import annotations

import copy
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402

VARIANTS = ["eager", "eager-no-grad", "monai-flash", "fast", "fast+channels_last", "fast+bf16",
            "compile"]
DEFAULT_VARIANTS = ["eager", "monai-flash", "fast", "fast+channels_last", "fast+bf16"]


def build(variant: str, model: torch.nn.Module):
    """The forward function of ``variant`` on (a copy of) ``model``: ``f(x, present) -> out``."""
    from medmap.fastpath import fast_classifier

    if variant == "eager":
        def run(x, present):
            with torch.inference_mode():
                return model(x, present)
        return run
    m = copy.deepcopy(model)
    if variant == "eager-no-grad":
        def run(x, present):
            with torch.no_grad():
                return m(x, present)
        return run
    if variant == "monai-flash":
        from monai.networks.nets.swin_unetr import WindowAttention

        for mod in m.modules():
            if isinstance(mod, WindowAttention):
                mod.use_flash_attention = True

        def run(x, present):
            with torch.inference_mode():
                return m(x, present)
        return run
    if variant == "compile":
        fast = fast_classifier(m)
        for enc in list(m.experts.encoders.values()) + list(getattr(m, "conv_stream", {}).values()):
            enc.compile()
        return fast
    return fast_classifier(m, precision="bf16" if "bf16" in variant else "fp32",
                           channels_last="channels_last" in variant)


def main(argv: list[str] | None = None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--phases", type=int, default=8)
    ap.add_argument("--feature-sizes", type=int, nargs="+", default=[48])
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="cases per forward")
    ap.add_argument("--window", type=int, default=7)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=DEFAULT_VARIANTS)
    ap.add_argument("--logit-scale", type=float, default=5.0,
                    help="multiply the head's weights (spread the probabilities); 1: as built")
    ap.add_argument("--bf16", action="store_true",
                    help="shorthand: add the fast+bf16 variant (kept for old command lines)")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.phases, a.feature_sizes, a.batch = 32, 2, [12], [1]
        a.repeats = a.repeats or 1     # warm-up 1: first calls are not steady
    a.repeats = a.repeats or 3
    variants = list(dict.fromkeys(["eager", *a.variants, *(["fast+bf16"] if a.bf16 else [])]))
    dev = C.setup(a)

    rows, raw = [], []
    for fs in a.feature_sizes:
        cfg = C.medmap_config([f"m{i}" for i in range(a.phases)], feature_size=fs, size=a.size,
                              window=a.window, quick=a.quick)
        model = C.classifier(cfg, torch.Generator().manual_seed(0)).to(dev).eval()
        with torch.no_grad():
            for p in model.head.parameters():
                p.mul_(a.logit_scale)
        for B in a.batch:
            g = torch.Generator().manual_seed(1)
            x = torch.randn(B, a.phases, 1, a.size, a.size, a.size, generator=g).to(dev)
            present = torch.ones(B, a.phases, dtype=torch.bool, device=dev)
            ref = None
            for variant in variants:
                run = build(variant, model)
                outs: list[dict] = []

                def fwd(run=run, outs=outs, x=x, present=present):
                    out = run(x, present)
                    outs[:] = [{k: out[k].float().cpu() for k in ("probs", "logits")}]

                try:
                    r = C.measure(fwd, a.repeats, a.warmup, dev)
                except Exception as e:  # e.g. a compile failure: report it, go on
                    print(f"  fs{fs} B{B} {variant}: FAILED {type(e).__name__}: {e}"[:400],
                          file=sys.stderr)
                    rows.append([f"fs{fs}", variant, B, None, None, None, None, None, None])
                    raw.append({"feature_size": fs, "batch": B, "variant": variant,
                                "error": repr(e)[:2000]})
                    continue
                out = outs[0]
                if ref is None:
                    ref, ref_s = out, r["mean"]
                dprob = (out["probs"] - ref["probs"]).abs().max().item()
                dlogit = (out["logits"] - ref["logits"]).abs().max().item()
                rows.append([f"fs{fs}", variant, B, r["mean"], r["mean"] / B,
                             ref_s / r["mean"], r["peak_mb"], dprob, dlogit])
                raw.append({"feature_size": fs, "batch": B, "variant": variant, **r,
                            "speedup_vs_eager": ref_s / r["mean"], "max_abs_dprob": dprob,
                            "max_abs_dlogit": dlogit,
                            "prob_spread": ref["probs"].std().item(),
                            "params_m": C.n_params(model) / 1e6})
                print(f"  fs{fs} B{B} {variant:<20} {r['mean']:.2f} s/call  "
                      f"x{ref_s / r['mean']:.2f}  dprob {dprob:.1e}  peak {r['peak_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
                del run, outs
                gc.collect()
                if variant == "compile":
                    torch._dynamo.reset()
            del x
            gc.collect()
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    settings = {"size": a.size, "phases": a.phases, "window": a.window,
                "repeats": a.repeats, "warmup": a.warmup, "logit_scale": a.logit_scale,
                "quick": a.quick}
    notes = ["\nspeed-up: eager fp32 (inference_mode) s/call / the row's; delta: largest "
             "|difference| from eager over the classes"]
    return C.emit("Inference: MedMAPClassifier forward, eager vs fast paths",
                  ["model", "variant", "cases/call", "s/call", "s/case", "speed-up",
                   "peak memory (MB)", "max |dprob|", "max |dlogit|"],
                  rows, a.json, settings, notes, extra={"raw": raw}, device=dev)


if __name__ == "__main__":
    main()
