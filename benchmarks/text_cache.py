"""A pre-training epoch with the text-embedding table (``TextTable``, as ``medmap.train.medmap.pretrain``
builds it: every report encoded once before training) versus re-encoding each batch's reports
with the frozen text encoder at every step.

Both epochs run the same real steps: ``ModalityPairDataset`` over a warm ``VolumeCache``, the
``GroupedBatchSampler`` of ``pretrain`` (one modality per batch), ``PretrainModule.training_step``
+ backward + the engine's AdamW, from the same initial weights. Only the collator differs:
``PairCollator(table)`` versus a collator calling ``FrozenTextEncoder.encode(reports)`` (no disk
cache) per batch. Target: the table makes an epoch >= 2x faster.

    python benchmarks/text_cache.py                     # 8 liver cases x 8 phases, 32^3, MiniLM
    python benchmarks/text_cache.py --text-model tiny   # the tiny random BERT instead
    python benchmarks/text_cache.py --quick             # smoke test (seconds)

The model: MedMAP with small Swin experts (feature size 12, window 4) at 32^3.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402


class ReencodeCollator:
    """``PairCollator`` that runs the frozen text encoder on the batch's reports every call."""

    def __init__(self, encoder, modalities):
        self.encoder, self.modalities = encoder, list(modalities)
        self.seconds = 0.0

    def __call__(self, items):
        from medmap.data.datasets import collate_pairs

        b = collate_pairs(items)
        t = time.perf_counter()
        b["text"] = self.encoder.encode(b["report"]).float()
        self.seconds += time.perf_counter() - t
        b["model_modality"] = torch.tensor([self.modalities.index(m) for m in b["modality"]])
        return b


def main(argv: list[str] | None = None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--cases", type=int, default=8, help="liver cases to simulate")
    ap.add_argument("--size", type=int, default=32, help="volume side")
    ap.add_argument("--phases", type=int, default=8, help="liver phases used (<= 8)")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step (demo: 8)")
    ap.add_argument("--text-model", choices=["minilm", "bert-base", "tiny"], default="minilm",
                    help="bert-base: BioBERT-sized random BERT (the paper's text encoder's cost)")
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs per setting")
    a = ap.parse_args(argv)
    if a.quick:
        a.cases, a.size, a.phases, a.batch, a.text_model = 2, 32, 2, 2, "tiny"
    dev = C.setup(a)

    from torch.utils.data import DataLoader

    from medmap.data.cache import VolumeCache
    from medmap.data.datasets import ModalityPairDataset
    from medmap.data.preprocess import PreprocessConfig, Preprocessor
    from medmap.data.sim import simulate
    from medmap.data.vocab import get_organ
    from medmap.models.encoders import CNNConfig, SwinConfig
    from medmap.models.medmap import MedMAPConfig, ModalityAwareCLIP
    from medmap.train.data import PairCollator, TextTable
    from medmap.train.engine import GroupedBatchSampler, OptimConfig, build_adamw
    from medmap.train.medmap import PretrainModule

    tmp = tempfile.TemporaryDirectory(prefix="medmap-bench-text-")
    root = Path(tmp.name)
    manifest = simulate(root / "sim", cases={"liver": a.cases}, size=a.size, organs=("liver",),
                        seed=0, workers=1)
    mods = list(get_organ("liver").modalities[: a.phases])
    cache = VolumeCache(root / "cache", Preprocessor(PreprocessConfig(spacing=None,
                                                                      size=(a.size,) * 3)))
    ds = ModalityPairDataset(manifest, cache, modalities=mods)
    for i in range(len(ds)):        # warm the volume cache: both epochs read the same way
        ds[i]
    reports = [p[3] for p in ds.pairs]

    t = time.perf_counter()
    encoder, used = C.text_encoder(a.text_model, root)
    encoder.device = torch.device(dev)
    encoder.model.to(dev)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    table = TextTable(encoder, reports)
    table_s = time.perf_counter() - t

    cfg = MedMAPConfig(modalities=mods, classes=["c"], text_dim=encoder.hidden_size,
                       encoder=SwinConfig(feature_size=12, depths=(2, 2, 2, 2),
                                             num_heads=(3, 6, 12, 24), window_size=4,
                                             out_stage=3),
                       conv_stream=CNNConfig(channels=(8, 16, 32, 64)),
                       embed_dim=96, cct_heads=4)
    torch.manual_seed(0)
    init = ModalityAwareCLIP(cfg)
    groups = [mods.index(p[1]) for p in ds.pairs]

    def epoch(collate) -> tuple[float, int]:
        model = copy.deepcopy(init).to(dev)
        oc = OptimConfig(epochs=a.epochs + 1, batch_size=a.batch)
        opt = build_adamw([(model.named_parameters(), 1.0)], oc, 1000, 100)[0]
        module = PretrainModule(model, oc)
        sampler = GroupedBatchSampler(groups, a.batch, seed=0)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
        secs, steps = [], 0
        for ep in range(a.epochs + (0 if a.quick else 1)):   # first epoch: warm-up
            sampler.sampler.set_epoch(ep)
            C.sync(dev)
            t = time.perf_counter()
            for b in loader:
                b = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
                loss = module.training_step(b, 0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
            C.sync(dev)
            secs.append(time.perf_counter() - t)
        timed = secs[-a.epochs:]
        return sum(timed) / len(timed), len(sampler)

    cached_s, n_steps = epoch(PairCollator(table, mods))
    re = ReencodeCollator(encoder, mods)
    reenc_s, _ = epoch(re)
    n_ep = a.epochs + (0 if a.quick else 1)
    text_per_step = re.seconds / max(1, n_ep * n_steps)
    rows = [
        ["TextTable (encode once, then look up)", cached_s, cached_s / n_steps, len(ds) / cached_s],
        ["re-encode reports every step", reenc_s, reenc_s / n_steps, len(ds) / reenc_s],
    ]
    settings = {"text_model": used, "cases": a.cases, "phases": len(mods), "pairs": len(ds),
                "steps_per_epoch": n_steps, "batch": a.batch, "size": a.size,
                "text_load_s": round(load_s, 2), "table_build_s": round(table_s, 3),
                "quick": a.quick}
    speedup = reenc_s / cached_s
    notes = [f"\nspeed-up per pre-training epoch: {speedup:.2f}x (target >= 2x); "
             f"text encoding per step {text_per_step * 1e3:.1f} ms; one-off table build "
             f"{table_s:.2f} s for {len(set(reports))} distinct reports"]
    payload = C.emit("Text embedding cache: pre-training epoch",
                     ["setting", "s/epoch", "s/step", "pairs/s"], rows, a.json, settings, notes,
                     extra={"speedup": speedup}, device=dev)
    tmp.cleanup()
    return payload


if __name__ == "__main__":
    main()
