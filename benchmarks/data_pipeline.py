"""Data pipeline throughput: read + preprocess liver cases to 128^3 cold (no cache) versus from the
volume cache (``VolumeCache``), and the cached loading time as a fraction of a fine-tuning step.

A handful of MedMoM-Sim liver cases (8 phases each) are simulated at ``--sim-size`` into a
temporary folder and preprocessed to ``--size`` (resize) exactly as training does:

* cold: ``CaseDataset`` over a bare ``Preprocessor`` (read NIfTI + orient + clip/normalise +
  resize, every epoch);
* first cached epoch: the same through a fresh ``VolumeCache`` (content hash + preprocess + write);
* cached: later epochs (safetensors read);
* a real ``DataLoader`` + ``CaseCollator`` (``StageDataModule``'s sampler settings) fetching a
  batch from the warm cache, versus one ``FinetuneModule`` step (``training_step`` + backward +
  AdamW) on that batch. Target: cached data loading <= 10% of a step.

    python benchmarks/data_pipeline.py                           # 4 cases, 64^3 -> 128^3
    python benchmarks/data_pipeline.py --workers 2 --feature-size 48
    python benchmarks/data_pipeline.py --quick                   # smoke test (seconds)

With ``--workers 0`` (the default ``OptimConfig.num_workers``) loading is serial with the step,
so the fraction is the share of wall time lost to data.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402


def _epoch(ds) -> float:
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--cases", type=int, default=4, help="liver cases to simulate")
    ap.add_argument("--sim-size", type=int, default=64, help="side of the simulated volumes")
    ap.add_argument("--size", type=int, default=128, help="preprocessed side")
    ap.add_argument("--phases", type=int, default=8, help="liver phases per case (<= 8)")
    ap.add_argument("--batch", type=int, default=2, help="cases per training batch")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--feature-size", type=int, default=24, help="Swin feature size of the step")
    ap.add_argument("--checkpoint", action="store_true", help="activation checkpointing")
    ap.add_argument("--epochs", type=int, default=2, help="cached epochs timed")
    ap.add_argument("--workdir", default=None, help="keep the simulated data here (default: tmp)")
    a = ap.parse_args(argv)
    if a.quick:
        a.cases, a.sim_size, a.size, a.phases, a.batch = 2, 32, 32, 2, 2
        a.epochs, a.warmup, a.repeats = 1, 0, a.repeats or 1
    a.repeats = a.repeats or 3
    dev = C.setup(a)

    from torch.utils.data import DataLoader

    from medmap.data.cache import VolumeCache
    from medmap.data.datasets import CaseDataset
    from medmap.data.preprocess import PreprocessConfig, Preprocessor
    from medmap.data.sim import simulate
    from medmap.data.vocab import get_organ
    from medmap.models.medmap import MedMAPClassifier
    from medmap.train.data import CaseCollator, TextTable
    from medmap.train.engine import EpochShuffleSampler, OptimConfig, build_adamw
    from medmap.train.medmap import FinetuneModule

    tmp = tempfile.TemporaryDirectory(prefix="medmap-bench-data-")
    root = Path(a.workdir or tmp.name)
    t = time.perf_counter()
    manifest = simulate(root / "sim", cases={"liver": a.cases}, size=a.sim_size,
                        organs=("liver",), seed=0, workers=1)
    sim_s = time.perf_counter() - t
    spec = get_organ("liver")
    mods = list(spec.modalities[: a.phases])
    n_vol = a.cases * len(mods)
    pcfg = PreprocessConfig(spacing=None, size=(a.size,) * 3)
    pre = Preprocessor(pcfg)

    rows = []
    cold = CaseDataset(manifest, pre, modalities=mods, organ="liver")
    pre(cold.cases[0].modalities[mods[0]], mods[0])    # untimed: MONAI's lazy imports
    sec = _epoch(cold)
    rows.append(["cold: read + preprocess (no cache)", sec / a.cases, a.cases / sec,
                 n_vol / sec])
    cache = VolumeCache(root / "cache", pre)
    ds = CaseDataset(manifest, cache, modalities=mods, organ="liver")
    sec = _epoch(ds)
    rows.append(["first cached epoch: hash + preprocess + write", sec / a.cases, a.cases / sec,
                 n_vol / sec])
    secs = [_epoch(ds) for _ in range(a.epochs)]
    sec = min(secs)
    rows.append(["cached (VolumeCache hit)", sec / a.cases, a.cases / sec, n_vol / sec])
    cold_cps, cached_cps = rows[0][2], rows[2][2]

    # --- a real loader + collator against a fine-tuning step --------------------------------
    encoder = C.tiny_text_encoder(root)
    collate = CaseCollator(None, "liver", list(spec.classes), mods)
    texts = [collate.texts({"reports": [c.reports], "label": torch.tensor([c.label_index])})[0]
             for c in ds.cases]
    collate.table = TextTable(encoder, texts)
    sampler = EpochShuffleSampler(len(ds), 0, True)
    loader = DataLoader(ds, batch_size=a.batch, sampler=sampler, collate_fn=collate,
                        num_workers=a.workers, persistent_workers=a.workers > 0)
    fetch = []
    for ep in range(a.epochs + 1):        # epoch 0 warms the workers up
        sampler.set_epoch(ep)
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            if ep > 0 or a.epochs == 0:
                fetch.append(time.perf_counter() - t)
    fetch_s = sum(fetch) / max(1, len(fetch))

    cfg = C.medmap_config(mods, len(spec.classes), feature_size=12 if a.quick else a.feature_size,
                          size=a.size, checkpoint=a.checkpoint, text_dim=encoder.hidden_size,
                          quick=a.quick)
    model = MedMAPClassifier(cfg, torch.randn(len(mods), encoder.hidden_size)).to(dev)
    oc = OptimConfig(epochs=10)
    opt = build_adamw([(model.named_parameters(), 1.0)], oc, 1000, 100)[0]
    module = FinetuneModule(model, oc)
    gb = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    bs = gb["images"].shape[0]

    def step():
        loss = module.training_step(gb, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    st = C.measure(step, a.repeats, a.warmup, dev)
    # the last batch of an epoch may be smaller: scale the step to the mean batch size
    step_s = st["mean"] * (a.batch / bs) if bs else st["mean"]
    rows.append([f"DataLoader+CaseCollator batch of {a.batch} (cached, {a.workers} workers)",
                 fetch_s / a.batch, a.batch / fetch_s, a.batch * len(mods) / fetch_s])
    rows.append([f"FinetuneModule step, batch {a.batch} (fs{cfg.encoder.feature_size})",
                 step_s / a.batch, a.batch / step_s, a.batch * len(mods) / step_s])
    frac = fetch_s / step_s
    settings = {"cases": a.cases, "phases": len(mods), "sim_size": a.sim_size, "size": a.size,
                "batch": a.batch, "workers": a.workers, "feature_size": cfg.encoder.feature_size,
                "simulate_s": round(sim_s, 2), "quick": a.quick}
    notes = [f"\ncached / cold speed-up: {cached_cps / cold_cps:.0f}x",
             f"cached data time per batch / fine-tuning step: {100 * frac:.1f}% "
             f"(target <= 10%); step peak memory {st['peak_mb']:.0f} MB"]
    payload = C.emit("Data pipeline: read + preprocess, cold vs cached",
                     ["stage", "s/case", "cases/s", "volumes/s"], rows, a.json, settings, notes,
                     extra={"data_fraction_of_step": frac, "step": st}, device=dev)
    del loader
    tmp.cleanup()
    return payload


if __name__ == "__main__":
    main()
