"""Data pipeline throughput: read + preprocess liver cases cold (no cache), through medmap's volume
cache (``VolumeCache``) and through MONAI's ``PersistentDataset`` on the same transform chain,
the first (preprocessing) epoch with N DataLoader workers, the cached epochs, and the cached
loading time as a fraction of a fine-tuning step.

MedMoM-Sim liver cases (8 phases each; ``--phases`` of them used) are simulated at
``--sim-size`` into ``--data-dir`` (kept and reused when given: simulating is the slow part) and
preprocessed to ``--size`` exactly as training does:

* cold: ``CaseDataset`` over a bare ``Preprocessor`` (read NIfTI + orient + clip/normalise +
  resize, every epoch), serial;
* first cached epoch: the same through a fresh ``VolumeCache`` (content hash + preprocess +
  write), serial, and then through a ``DataLoader`` with each of ``--workers-list`` workers (a
  fresh cache each);
* cached: later epochs (safetensors reads), serial and through the ``DataLoader``;
* ``--persistent``: MONAI's ``PersistentDataset`` with the same ``Preprocessor`` chain as its
  (deterministic, cached) transform, one cache file per case, first epoch and cached epochs
  through the same ``DataLoader`` settings. Both sides return a case's preprocessed volumes;
  the loaders use an identity collate so only the data access is timed, and every voxel
  returned is read (summed) in the timed loop, as training would;
* unless ``--no-step``: a real ``DataLoader`` + ``CaseCollator`` (``StageDataModule``'s sampler
  settings) fetching a batch from the warm cache, versus one ``FinetuneModule`` step on it.
  Target: cached data loading <= 10% of a step.

    python benchmarks/data_pipeline.py                           # 4 cases, 64^3 -> 128^3
    python benchmarks/data_pipeline.py --workers 2 --feature-size 48
    python benchmarks/data_pipeline.py --cases 2000 --sim-size 32 --size 32 --phases 2 \\
        --data-dir /tmp/medmap-sim2000 --workers-list 0 1 2 --persistent --no-step --no-cold
    python benchmarks/data_pipeline.py --quick                   # smoke test (seconds)

``--workers auto`` (the default) is what training uses: ``OptimConfig.num_workers: auto``
(``medmap.train.engine.auto_num_workers``, from the cores this process may run on).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402


def _touch(obj) -> float:
    """Read every voxel of every tensor in ``obj`` (a memory-mapped cache entry is only read
    when used: without this a cache that maps its files would look faster than one that reads
    them)."""
    if isinstance(obj, torch.Tensor):
        return float(obj.sum()) if obj.is_floating_point() else 0.0
    if isinstance(obj, dict):
        return sum(_touch(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_touch(v) for v in obj)
    return 0.0


def _epoch(ds) -> float:
    t = time.perf_counter()
    for i in range(len(ds)):
        _touch(ds[i])
    return time.perf_counter() - t


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _identity(batch):
    return batch


def _loader_epoch(ds, workers: int, batch: int) -> float:
    """One pass over ``ds`` through a fresh DataLoader (workers started inside the timing)."""
    from torch.utils.data import DataLoader

    t = time.perf_counter()
    for b in DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers,
                        collate_fn=_identity):
        _touch(b)
    return time.perf_counter() - t


def _persistent_dataset(cases, mods, pre, cache_dir: Path):
    """MONAI ``PersistentDataset`` over the same cases and ``Preprocessor`` chain."""
    from monai.data import PersistentDataset
    from monai.transforms import Compose, Transform

    class PreprocessCase(Transform):
        """A case's volumes through medmap's Preprocessor (MONAI Transform: so it is cached)."""

        def __call__(self, item):
            return {m: pre(item[m], m) for m in mods if m in item}

    data = [{m: c.modalities[m] for m in mods if m in c.modalities} for c in cases]
    return PersistentDataset(data, Compose([PreprocessCase()]), cache_dir=str(cache_dir))


def _simulate(root: Path, cases: int, size: int, workers: int):
    from medmap.data.manifest import Manifest
    from medmap.data.sim import simulate

    path = root / "manifest.jsonl"
    if path.exists():
        m = Manifest.load(path)
        if len(m.cases) == cases:
            return m, 0.0, True
    t = time.perf_counter()
    m = simulate(root, cases={"liver": cases}, size=size, organs=("liver",), seed=0,
                 workers=workers)
    return m, time.perf_counter() - t, False


def main(argv: list[str] | None = None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--cases", type=int, default=4, help="liver cases to simulate")
    ap.add_argument("--sim-size", type=int, default=64, help="side of the simulated volumes")
    ap.add_argument("--size", type=int, default=128, help="preprocessed side")
    ap.add_argument("--phases", type=int, default=8, help="liver phases per case (<= 8)")
    ap.add_argument("--batch", type=int, default=2, help="cases per training batch")
    ap.add_argument("--workers", default="auto",
                    help="DataLoader workers of the cached / step rows: an int or 'auto'")
    ap.add_argument("--workers-list", type=int, nargs="*", default=[],
                    help="first epochs through a DataLoader with each of these worker counts")
    ap.add_argument("--persistent", action="store_true",
                    help="MONAI PersistentDataset on the same chain, side by side")
    ap.add_argument("--no-step", action="store_true", help="skip the fine-tuning step rows")
    ap.add_argument("--no-cold", action="store_true",
                    help="skip the serial cold and first-cached epochs (the slow rows at scale)")
    ap.add_argument("--feature-size", type=int, default=24, help="Swin feature size of the step")
    ap.add_argument("--checkpoint", action="store_true", help="activation checkpointing")
    ap.add_argument("--epochs", type=int, default=2, help="cached epochs timed")
    ap.add_argument("--data-dir", default=None,
                    help="simulate into / reuse this folder (default: a temporary one)")
    ap.add_argument("--sim-workers", type=int, default=None, help="simulation processes")
    ap.add_argument("--limit", type=int, default=None,
                    help="use only the first N simulated cases (e.g. a larger --size on a "
                         "subset of a reused --data-dir)")
    ap.add_argument("--workdir", default=None, help="caches go here (default: tmp)")
    a = ap.parse_args(argv)
    if a.quick:
        a.cases, a.sim_size, a.size, a.phases, a.batch = 2, 32, 32, 2, 2
        a.epochs, a.warmup, a.repeats = 1, 0, a.repeats or 1
        a.workers_list = a.workers_list or [0]
    a.repeats = a.repeats or 3
    dev = C.setup(a)

    from torch.utils.data import DataLoader

    from medmap.data.cache import VolumeCache
    from medmap.data.datasets import CaseDataset
    from medmap.data.preprocess import PreprocessConfig, Preprocessor
    from medmap.data.vocab import get_organ
    from medmap.train.data import CaseCollator, TextTable
    from medmap.train.engine import EpochShuffleSampler, OptimConfig, build_adamw
    from medmap.train.medmap import FinetuneModule

    # "auto": what training uses, OptimConfig's default (num_workers: auto)
    workers = OptimConfig().num_workers if a.workers == "auto" else int(a.workers)
    tmp = tempfile.TemporaryDirectory(prefix="medmap-bench-data-")
    work = Path(a.workdir or tmp.name)
    data_root = Path(a.data_dir) if a.data_dir else work / "sim"
    manifest, sim_s, reused = _simulate(data_root, a.cases, a.sim_size,
                                        a.sim_workers or _cpus())
    spec = get_organ("liver")
    mods = list(spec.modalities[: a.phases])
    pcfg = PreprocessConfig(spacing=None, size=(a.size,) * 3)
    pre = Preprocessor(pcfg)
    if a.limit:
        manifest = manifest.resolved()[: a.limit]     # a list of cases, paths resolved
    cold = CaseDataset(manifest, pre, modalities=mods, organ="liver")
    n_case = len(cold)
    n_vol = sum(m in c.modalities for c in cold.cases for m in mods)
    pre(cold.cases[0].modalities[mods[0]], mods[0])    # untimed: MONAI's lazy imports

    rows: list[list] = []
    extra: dict = {}

    def add(stage: str, sec: float, key: str | None = None):
        rows.append([stage, sec, sec / n_case, n_case / sec, n_vol / sec])
        if key:
            extra[key] = sec

    def fresh(name: str) -> Path:
        d = work / name
        shutil.rmtree(d, ignore_errors=True)
        return d

    if not a.no_cold:
        add("cold: read + preprocess (no cache), serial", _epoch(cold), "cold_epoch_s")
    cache = VolumeCache(fresh("cache"), pre)
    ds = CaseDataset(manifest, cache, modalities=mods, organ="liver")
    if not a.no_cold:
        add("first cached epoch: hash + preprocess + write, serial", _epoch(ds),
            "first_epoch_serial_s")
    else:   # warm the cache through the fastest loader instead (untimed row below)
        _loader_epoch(ds, max([workers, *a.workers_list]), a.batch)
    secs = [_epoch(ds) for _ in range(a.epochs)]
    add(f"cached epoch (VolumeCache hit), serial, best of {a.epochs}", min(secs),
        "cached_epoch_serial_s")
    secs = [_loader_epoch(ds, workers, a.batch) for _ in range(a.epochs)]
    add(f"cached epoch, DataLoader {workers} workers (auto), best of {a.epochs}", min(secs),
        "cached_epoch_loader_s")

    for w in a.workers_list:
        d = CaseDataset(manifest, VolumeCache(fresh(f"cache-w{w}"), pre), modalities=mods,
                        organ="liver")
        from medmap.data import cache as cache_mod

        cache_mod._HASH_MEMO.clear()         # nothing memoised from the earlier epochs
        add(f"first epoch, DataLoader {w} workers: hash + preprocess + write",
            _loader_epoch(d, w, a.batch), f"first_epoch_w{w}_s")
        shutil.rmtree(work / f"cache-w{w}", ignore_errors=True)

    ratio = None
    if a.persistent:
        w = max([workers, *a.workers_list])
        pds = _persistent_dataset(cold.cases, mods, pre, fresh("persistent"))
        add(f"PersistentDataset first epoch, DataLoader {w} workers", _loader_epoch(pds, w,
                                                                                    a.batch),
            "persistent_first_epoch_s")
        secs = [_loader_epoch(pds, workers, a.batch) for _ in range(a.epochs)]
        add(f"PersistentDataset cached epoch, DataLoader {workers} workers (auto), best of "
            f"{a.epochs}", min(secs), "persistent_cached_epoch_loader_s")
        secs = [_epoch(pds) for _ in range(a.epochs)]
        add(f"PersistentDataset cached epoch, serial, best of {a.epochs}", min(secs),
            "persistent_cached_epoch_serial_s")
        ratio = extra["cached_epoch_loader_s"] / extra["persistent_cached_epoch_loader_s"]
        extra["persistentdataset_ratio"] = ratio
        extra["persistentdataset_ratio_serial"] = (extra["cached_epoch_serial_s"]
                                                   / extra["persistent_cached_epoch_serial_s"])
        # same tensors either way
        a_item, b_item = ds[0]["images"], pds[0]
        extra["persistent_same_tensors"] = all(torch.equal(a_item[m], b_item[m])
                                               for m in a_item)

    frac, st = None, None
    if not a.no_step:
        encoder = C.tiny_text_encoder(work)
        collate = CaseCollator(None, "liver", list(spec.classes), mods)
        texts = [collate.texts({"reports": [c.reports],
                                "label": torch.tensor([c.label_index])})[0] for c in ds.cases]
        collate.table = TextTable(encoder, texts)
        sampler = EpochShuffleSampler(len(ds), 0, True)
        loader = DataLoader(ds, batch_size=a.batch, sampler=sampler, collate_fn=collate,
                            num_workers=workers, persistent_workers=workers > 0)
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

        cfg = C.medmap_config(mods, len(spec.classes),
                              feature_size=12 if a.quick else a.feature_size, size=a.size,
                              checkpoint=a.checkpoint, text_dim=encoder.hidden_size,
                              quick=a.quick)
        model = C.classifier(cfg).to(dev)
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
        rows.append([f"DataLoader+CaseCollator batch of {a.batch} (cached, {workers} workers)",
                     fetch_s, fetch_s / a.batch, a.batch / fetch_s,
                     a.batch * len(mods) / fetch_s])
        rows.append([f"FinetuneModule step, batch {a.batch} (fs{cfg.encoder.feature_size})",
                     step_s, step_s / a.batch, a.batch / step_s, a.batch * len(mods) / step_s])
        frac = fetch_s / step_s
        del loader
    settings = {"cases": n_case, "volumes": n_vol, "phases": len(mods), "sim_size": a.sim_size,
                "size": a.size, "batch": a.batch, "workers": workers,
                "cpus": _cpus(), "simulate_s": round(sim_s, 2),
                "simulation_reused": reused, "quick": a.quick}
    notes = []
    if "cold_epoch_s" in extra:
        notes.append(f"\ncached / cold speed-up (serial): "
                     f"{extra['cold_epoch_s'] / extra['cached_epoch_serial_s']:.0f}x")
    if ratio is not None:
        notes.append(f"medmap cached epoch / PersistentDataset cached epoch ({workers} workers): "
                     f"{ratio:.2f} (serial: {extra['persistentdataset_ratio_serial']:.2f}); "
                     f"same tensors: {extra['persistent_same_tensors']}")
    if frac is not None:
        notes.append(f"cached data time per batch / fine-tuning step: {100 * frac:.1f}% "
                     f"(target <= 10%); step peak memory {st['peak_mb']:.0f} MB")
    payload = C.emit("Data pipeline: read + preprocess, cold vs cached vs PersistentDataset",
                     ["stage", "s (epoch or call)", "s/case", "cases/s", "volumes/s"], rows,
                     a.json, settings, notes,
                     extra={"data_fraction_of_step": frac, "step": st, **extra}, device=dev)
    tmp.cleanup()
    return payload


if __name__ == "__main__":
    main()
