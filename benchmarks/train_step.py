"""Per-step time and peak memory of MedMAP pre-training and fine-tuning steps, compared with the
bare MONAI Swin encoder forward + backward on the same input (the ratio is medmap's overhead).

    python benchmarks/train_step.py --size 64 --feature-size 12 --batch 2 --phases 8

Prints a Markdown table. Peak memory is the process's peak RSS growth over the step (CPU) or
``torch.cuda.max_memory_allocated`` (GPU).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from medmap.losses.contrastive import modality_contrastive_loss
from medmap.losses.medmap import medmap_loss
from medmap.models.encoders import EncoderConfig, build_encoder
from medmap.models.medmap import MedMAPClassifier, MedMAPConfig, ModalityAwareCLIP


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        mem = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        mem = _rss_mb()
    return (time.perf_counter() - t) / repeats, mem if device.type == "cuda" else max(mem, base)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--feature-size", type=int, default=12)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--phases", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint", action="store_true", help="activation checkpointing")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    S, B, M = a.size, a.batch, a.phases
    enc_cfg = EncoderConfig(name="swin", feature_size=a.feature_size, depths=(2, 2, 2, 2),
                            num_heads=(3, 6, 12, 24), window_size=4,
                            out_stage=4 if S >= 64 else 3, use_checkpoint=a.checkpoint)
    cfg = MedMAPConfig(modalities=[f"m{i}" for i in range(M)], classes=[f"c{i}" for i in range(7)],
                       encoder=enc_cfg, conv_stream=EncoderConfig(name="cnn", channels=(8, 16, 32, 64)),
                       embed_dim=96, text_dim=384, cct_heads=4)
    rows = []

    bare = build_encoder(enc_cfg).to(dev)
    x1 = torch.randn(B, 1, S, S, S, device=dev)

    def bare_step():
        bare.zero_grad()
        bare(x1).pooled.sum().backward()

    rows.append(("bare MONAI Swin fwd+bwd (1 volume x B)", *timed(bare_step, a.repeats, dev)))

    clip = ModalityAwareCLIP(cfg).to(dev)
    opt = torch.optim.AdamW(clip.parameters())
    text = torch.randn(B, 384, device=dev)
    mod = torch.zeros(B, dtype=torch.long, device=dev)

    def pre_step():
        out = clip(x1, mod, text)
        loss = modality_contrastive_loss(out["image_features"], out["text_features"],
                                         out["modality"], out["logit_scale"])["contrastive_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    rows.append(("pre-training step (B pairs)", *timed(pre_step, a.repeats, dev)))
    del clip, opt

    model = MedMAPClassifier(cfg, torch.randn(M, 384)).to(dev)
    opt = torch.optim.AdamW(model.parameters())
    xs = torch.randn(B, M, 1, S, S, S, device=dev)
    present = torch.ones(B, M, dtype=torch.bool, device=dev)
    y = torch.zeros(B, dtype=torch.long, device=dev)

    def ft_step():
        out = model(xs, present)
        loss = medmap_loss(out["logits"], y, out["fusion"], model.text_features(text), 1, 10)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()

    rows.append((f"fine-tuning step (B cases x {M} phases)", *timed(ft_step, a.repeats, dev)))

    def experts_only():
        model.zero_grad()
        sum(model.experts.encoders[k](xs[:, i]).pooled.sum()
            for i, k in enumerate(model.experts.encoders)).backward()

    rows.append((f"its {M} Swin experts alone fwd+bwd", *timed(experts_only, a.repeats, dev)))
    print(f"device {dev}, {S}^3, batch {B}, Swin feature_size {a.feature_size}, "
          f"threads {torch.get_num_threads()}")
    print("| step | seconds | peak memory (MB) |\n|---|---|---|")
    for name, sec, mem in rows:
        print(f"| {name} | {sec:.2f} | {mem:.0f} |")
    print(f"fine-tuning / experts-alone ratio: {rows[2][1] / rows[3][1]:.2f}")


if __name__ == "__main__":
    main()
