"""``medmap demo``: the whole pipeline end to end on the embedded MedMoM-Sim benchmark.

Simulates liver (8 phases, 7 classes) and brain (4 sequences, benign vs malignant) studies,
pre-trains the modality experts (per-sequence reports plus the case-level global impression,
until validation retrieval stops improving), fine-tunes MedMAP (CSA with class-knowledge text
guidance + CCT), evaluates on the test split, runs report-free zero-shot classification and
per-sequence retrieval with the pre-trained model, and writes an HTML report per organ. Like the
LLD-MMRI benchmark the liver data come from, the demo classifies the annotated lesion region:
every volume is cropped to the bounding box of the case's lesion mask plus a 10 mm margin
(``preprocess.roi_mask: lesion``) before the resize to 32^3, so ``medmap predict`` on a demo
model needs the lesion mask too (``--roi``). The default uses small 3D CNN experts (the ``cnn``
encoder) so that it fits 10 CPU minutes; ``quick`` runs the same pipeline on the brain alone at
a small size in about a minute (the smallest size at which it learns on seeds 0 and 1);
``full`` runs the paper's Swin experts at 64^3. Wall time, memory and metrics
are in the README.

Example:
    >>> from medmap.demo import run_demo
    >>> summary = run_demo("medmap-demo")        # doctest: +SKIP
    >>> summary["liver"]["accuracy"], summary["liver"]["zeroshot"]["auc"]   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medmap.config import UserError
from medmap.data.augment import AugmentConfig
from medmap.data.preprocess import PreprocessConfig
from medmap.models.encoders import CNNConfig, SwinConfig
from medmap.models.medmap import MedMAPConfig
from medmap.train.config import ExperimentConfig
from medmap.train.engine import OptimConfig


@dataclass
class DemoSettings:
    """Sizes of the demo (default), of ``--quick`` or of ``--full``."""

    cases: dict[str, int] = field(default_factory=lambda: {"liver": 260, "brain": 180})
    # simulated volume side per organ (cropped to the lesion region, then resized to ``size``)
    sim_size: dict[str, int] = field(default_factory=lambda: {"liver": 48, "brain": 48})
    # train / val / test fractions: a large test split keeps the confidence intervals useful
    split_fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)
    size: int = 32
    # manifest mask each organ's volumes are cropped to before resizing (None: whole FOV)
    roi_mask: dict[str, str | None] = field(default_factory=lambda: {"liver": "lesion",
                                                                     "brain": "lesion"})
    lesion_radius_mm: tuple[float, float] = (12.0, 28.0)
    # MRI intensity normalisation per organ: liver lesions are read against the liver around
    # them, so each volume is divided by the mean signal of a tissue shell around the lesion
    # ("mri_reference"; a z-score per crop removes that ratio); brain tumours are read by
    # their shape and internal pattern, and a shell around them is edema, not a reference:
    # z-score ("mri"). Chosen on the validation split (docs/method.md).
    intensity: dict[str, str] = field(default_factory=lambda: {"liver": "mri_reference",
                                                               "brain": "mri"})
    # per organ, how the sequences' features become the case's: the liver's classes differ in
    # how a lesion changes from phase to phase (arterial enhancement, then washout), so each
    # phase keeps a fixed slot ("concat") and brings its own intensity statistics in the
    # lesion, core, rim and shell (region_intensity, with a lesion mask only); the brain keeps
    # the mean over sequences, where both were worse (measured on 9 liver and 3 brain seeds,
    # docs/method.md)
    modality_pool: dict[str, str] = field(default_factory=lambda: {"liver": "concat",
                                                                   "brain": "mean"})
    region_intensity: dict[str, bool] = field(default_factory=lambda: {"liver": True,
                                                                       "brain": False})
    # per organ, whether those region statistics also feed a linear classifier added to the
    # head (stats_head, needs region_intensity): liver +0.021 accuracy over nine seeds, paired
    # 95% CI [0.001, 0.041]; the brain, which reads no statistics, was lower with them. The
    # head starts from a logistic regression fitted on the training cases' statistics
    # (MedMAPConfig.stats_head_init "fit", the default): +0.039 more [0.019, 0.058]
    stats_head: dict[str, bool] = field(default_factory=lambda: {"liver": True,
                                                                 "brain": False})
    # modality experts: "cnn" (small 3D CNNs, fast on a CPU) or "swin" (the paper's)
    expert: str = "cnn"
    # pre-training stops when validation retrieval has not improved for `pretrain_patience`
    # epochs (at most `pretrain_epochs`); the best epoch is kept
    pretrain_epochs: int = 16
    pretrain_patience: int = 3
    # per organ. The liver's stats head starts from a fitted regression, and 10 epochs from the
    # same pre-trained experts equal 20 over nine seeds (paired test accuracy +0.000, 95% t
    # [-0.023, 0.023]; macro AUC +0.000), at half the stage's time; the brain, which has no
    # such head, was still improving at 12 and keeps 20 (docs/method.md)
    finetune_epochs: dict[str, int] = field(default_factory=lambda: {"liver": 10, "brain": 20})
    batch_size: int = 8
    # cases per forward (and Grad-CAM backward) pass in evaluation, zero-shot and retrieval; the
    # results do not depend on it (tests/eval/test_report.py); 16 instead of 4 takes 4-5 s off
    # the demo's liver evaluation
    eval_batch_size: int = 16
    feature_size: int = 12          # swin experts only
    augment: bool = True            # random flips and intensity scale / shift in training
    n_boot: int = 500               # bootstrap resamples of the confidence intervals
    organs: tuple[str, ...] = ("liver", "brain")   # run_demo(organs=...) / --organs override

    @classmethod
    def full(cls) -> DemoSettings:
        return cls(cases={"liver": 350, "brain": 200}, sim_size={"liver": 96, "brain": 64},
                   size=64, lesion_radius_mm=(8.0, 22.0), expert="swin", pretrain_epochs=40,
                   pretrain_patience=5, finetune_epochs={"liver": 60, "brain": 60}, batch_size=4,
                   eval_batch_size=4, feature_size=24)

    @classmethod
    def quick(cls) -> DemoSettings:
        """The first thing to try: the same pipeline and output layout in about a minute, on
        the brain alone. At the liver's quick size (36 cases, 2 epochs) 7 classes stay at
        chance; 80 brain cases at 48^3 with 12 fine-tuning epochs are the smallest setting
        measured to put the accuracy's CI above chance on seeds 0 and 1, and 4 pre-training
        epochs (not 2) put retrieval above chance on both (docs/benchmarks.md).
        ``--organs liver brain`` adds the liver as a smoke test."""
        return cls(cases={"liver": 36, "brain": 80}, sim_size={"liver": 32, "brain": 48},
                   split_fractions=(0.5, 0.15, 0.35), pretrain_epochs=4, pretrain_patience=0,
                   finetune_epochs={"liver": 2, "brain": 12}, n_boot=100, organs=("brain",))


def demo_config(organ: str, manifest: Path, cache: Path, s: DemoSettings,
                seed: int = 0) -> ExperimentConfig:
    """The experiment config the demo runs for ``organ``."""
    cfg = ExperimentConfig()
    cfg.data.manifest = str(manifest)
    cfg.data.organ = organ
    cfg.data.cache_dir = str(cache / "volumes")
    cfg.data.preprocess = PreprocessConfig(spacing=None, size=(s.size,) * 3,
                                           roi_mask=s.roi_mask.get(organ),
                                           intensity=s.intensity[organ])
    cfg.text.cache_dir = str(cache / "text")
    if s.expert == "cnn":
        # 3 stride-2 blocks: a 4^3 feature map at 32^3 (about 0.2 M parameters per expert).
        # With 4 blocks the map is 2^3 and Grad-CAM's maximum always lands in a corner octant.
        # Batch norm: an instance norm after the first convolution removes each volume's
        # signal level, the very quantity the lesion classes differ in.
        expert = CNNConfig(channels=(16, 32, 64), norm="batch")
    elif s.expert == "swin":
        expert = SwinConfig(feature_size=s.feature_size, depths=(2, 2, 2, 2),
                            num_heads=(3, 6, 12, 24), window_size=4,
                            out_stage=3 if s.size < 64 else 4)
    else:
        raise UserError(f"DemoSettings.expert must be 'cnn' or 'swin', got {s.expert!r}")
    masked = s.roi_mask.get(organ) == "lesion"   # the lesion mask is an input anyway: use it
    cfg.model = MedMAPConfig(encoder=expert,
                             conv_stream=CNNConfig(channels=(8, 16, 32, 64), norm="batch"),
                             embed_dim=96, cct_heads=4, dropout=0.1,
                             pooling="mask" if masked else "mean_max",
                             region_scales=[0, 1] if masked else [],
                             modality_pool=s.modality_pool.get(organ, "mean"),
                             region_intensity=masked and s.region_intensity.get(organ, False),
                             stats_head=(masked and s.region_intensity.get(organ, False)
                                         and s.stats_head.get(organ, False)))
    if s.augment:
        cfg.data.augment = AugmentConfig(flip_prob=0.5, intensity_scale=0.1, intensity_shift=0.1)
    # 2e-4: at 1e-3 the Swin experts collapsed to a constant prediction (measured)
    cfg.pretrain = OptimConfig(epochs=s.pretrain_epochs, batch_size=s.batch_size, lr=2e-4,
                               warmup_epochs=0.5, seed=seed,
                               early_stop_patience=s.pretrain_patience)
    # Cross-entropy with constant weights (the library default): the paper's BCE with the
    # classification weight ramped up from 7e-4 left the classifier under-fitted in a short
    # run (docs/method.md).
    cfg.finetune = OptimConfig(epochs=s.finetune_epochs[organ], batch_size=s.batch_size, lr=2e-4,
                               warmup_epochs=1.0, seed=seed)
    return cfg


class StageClock:
    """Wall and CPU seconds (user + sys, this process and its children: finished ones, and on
    Linux the running ones, such as a worker pool kept across stages) per named stage:
    ``with clock("liver: fine-tuning"): ...``; ``table`` maps each name to both."""

    def __init__(self):
        self.table: dict[str, dict[str, float]] = {}

    @staticmethod
    def _cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
                + _running_children_cpu())

    @contextlib.contextmanager
    def __call__(self, name: str):
        t, c = time.perf_counter(), self._cpu()
        try:
            yield
        finally:
            self.table[name] = {"wall_s": round(time.perf_counter() - t, 1),
                                "cpu_s": round(self._cpu() - c, 1)}


def _running_children_cpu() -> float:
    """User + sys seconds of this process's running children (``/proc``; 0 elsewhere)."""
    import multiprocessing
    import os

    tick, total = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100, 0.0
    for child in multiprocessing.active_children():
        try:
            stat = Path(f"/proc/{child.pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()       # after "pid (comm)": state is field 0
        total += (int(fields[11]) + int(fields[12])) / tick   # utime, stime
    return total


def peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children, GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024 ** 2


def _warm_organ(cfg: ExperimentConfig, manifest: Path, pool=None) -> int:
    """Preprocess every volume (and lesion mask) of the organ's cases into the cache, all
    splits, with one process per core (``pool``: the demo's shared workers)."""
    from medmap.data.datasets import CaseDataset
    from medmap.data.manifest import Manifest
    from medmap.train.stage import build_loader, warm_cache

    ds = CaseDataset(Manifest.load(manifest).select(organ=cfg.data.organ),
                     build_loader(cfg.data), organ=cfg.data.organ, with_masks=True,
                     mask_key=cfg.model.mask_key)
    return warm_cache(ds, pool=pool)


def _one_thread() -> None:
    """Initialiser of the demo's workers: one torch thread each (one worker per core)."""
    import torch

    torch.set_num_threads(1)


def _worker_context():
    """``fork`` on Linux (the workers inherit this process's imports instead of paying ~5 s
    each to import torch and MONAI again; the demo starts them before it trains anything),
    ``spawn`` elsewhere."""
    import sys
    from multiprocessing import get_all_start_methods, get_context

    if sys.platform.startswith("linux") and "fork" in get_all_start_methods():
        return get_context("fork")
    return get_context("spawn")


@contextlib.contextmanager
def _shared_workers():
    """A process pool with one worker per core, one torch thread each (None on one core); its
    workers start when the block begins and stop when it ends."""
    from concurrent.futures import ProcessPoolExecutor

    from medmap.train.engine import available_cpus

    cores = available_cpus()
    if cores < 2:
        yield None
        return
    pool = ProcessPoolExecutor(cores, mp_context=_worker_context(), initializer=_one_thread)
    pool.submit(int).result()       # a forking pool starts every worker now, before training
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def language_summary(zs: dict[str, Any], rt: dict[str, Any]) -> dict[str, Any]:
    """``summary[organ]["zeroshot"]`` / ``["retrieval"]`` (per-sequence, report -> volume,
    averaged over sequences) of the demo's summary.json."""
    r2v = rt["per_sequence"]["report_to_volume"]
    return {"zeroshot": {"auc": zs["auc"], "ci": zs["ci"], "accuracy": zs["accuracy"]},
            "retrieval": {**{f"R@{k}": r2v[f"R@{k}"] for k in (1, 5, 10)},
                          **{f"chance@{k}": r2v[f"chance@{k}"] for k in (1, 5, 10)},
                          "gallery": int(round(rt["per_sequence"]["gallery"]))}}


def run_demo(out_dir: str | Path = "medmap-demo", full: bool = False, seed: int = 0,
             settings: DemoSettings | None = None, organs: tuple[str, ...] | None = None,
             quick: bool = False) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``OUT/summary.json``) the headline metrics.
    ``organs``: the organs to run (None: the settings' own, both for the default demo, the
    brain for ``quick``)."""
    from medmap.baselines.radiomics import run_radiomics
    from medmap.data.sim import SimConfig, simulate
    from medmap.downstream.retrieval import retrieval
    from medmap.downstream.zeroshot import zeroshot
    from medmap.eval.curves import read_curves
    from medmap.eval.evaluate import evaluate
    from medmap.train.medmap import finetune, pretrain

    if full and quick:
        raise UserError("choose --full or --quick, not both")
    s = settings or (DemoSettings.full() if full else DemoSettings.quick() if quick
                     else DemoSettings())
    organs = tuple(organs or s.organs)
    unknown = [o for o in organs if o not in s.cases]
    if unknown or not organs:
        raise UserError(f"demo organs {list(unknown or organs)}: choose from {list(s.cases)}")
    out = Path(out_dir)
    t0 = time.time()
    clock = StageClock()
    print("[1/5] simulating MedMoM-Sim ("
          + ", ".join(f"{o}: {s.cases[o]} cases at {s.sim_size[o]}^3" for o in organs)
          + f") -> {out / 'data'}", flush=True)
    manifest = out / "data" / "manifest.jsonl"
    with clock("simulation"):
        simulate(out / "data", cases={o: s.cases[o] for o in organs},
                 size={o: s.sim_size[o] for o in organs}, seed=seed, organs=organs,
                 config=SimConfig(lesion_radius_mm=s.lesion_radius_mm,
                                  split_fractions=s.split_fractions), progress=True)
    summary: dict[str, Any] = {"settings": asdict(s), "seed": seed, "organs": list(organs)}
    # one pool of worker processes (started once) for every organ's preprocessing and
    # radiomics, instead of one per job
    with _shared_workers() as pool:
        for organ in organs:
            cfg = demo_config(organ, manifest, out / "cache", s, seed)
            runs = out / "runs" / organ
            print(f"[2/5] {organ}: modality-aware pre-training (up to {s.pretrain_epochs} epochs) "
                  f"[{time.time() - t0:.0f} s]", flush=True)
            with clock(f"{organ}: preprocessing (volume cache)"):
                _warm_organ(cfg, manifest, pool)  # every split once: training, zero-shot, eval
            with clock(f"{organ}: pre-training"):
                pre = pretrain(cfg, runs / "pretrain", overwrite=True)   # the demo owns its folder
            print(f"[3/5] {organ}: fine-tuning MedMAP ({s.finetune_epochs[organ]} epochs) "
                  f"[{time.time() - t0:.0f} s]", flush=True)
            with clock(f"{organ}: fine-tuning"):
                finetune(cfg, runs / "finetune", init=pre, overwrite=True)
            print(f"[4/5] {organ}: zero-shot and retrieval with the pre-trained model "
                  f"[{time.time() - t0:.0f} s]", flush=True)
            with clock(f"{organ}: zero-shot and retrieval"):
                zs = zeroshot(pre, manifest, split="test", out_dir=runs / "zeroshot",
                              cache_dir=cfg.data.cache_dir, n_boot=s.n_boot, seed=seed,
                              batch_size=s.eval_batch_size)
                rt = retrieval(pre, manifest, split="test", out_dir=runs / "retrieval",
                               cache_dir=cfg.data.cache_dir, seed=seed,
                               batch_size=s.eval_batch_size)
            print(f"[5/5] {organ}: radiomics baseline and evaluation on the test split "
                  f"[{time.time() - t0:.0f} s]", flush=True)
            with clock(f"{organ}: radiomics baseline"):
                rad = run_radiomics(manifest, organ, runs / "radiomics", n_boot=s.n_boot,
                                    seed=seed, pool=pool)
            with clock(f"{organ}: evaluation and report"):
                res = evaluate(runs / "finetune", manifest, split="test", n_boot=s.n_boot,
                               cache_dir=cfg.data.cache_dir, batch_size=s.eval_batch_size,
                               language={"zeroshot": zs, "retrieval": rt, "model": str(pre)},
                               baselines={"radiomics + logistic regression": {
                                   **rad, "note": f"{rad['n_features']} IBSI features "
                                                  f"({rad['library']}) of the lesion per sequence"}})
            m = res["metrics"]
            epochs = len(read_curves(runs / "pretrain").get("val/retrieval_r5", []))
            summary[organ] = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                              "auc": m["auc"], "n_test": m["n"], "chance": 1 / len(m["classes"]),
                              "ci": m.get("ci"), "report": str(res["files"]["report"]),
                              "pretrain_epochs_run": epochs,
                              "radiomics": {k: rad["metrics"][k] for k in ("accuracy", "auc", "ci")},
                              **language_summary(zs, rt)}
            lo = (m.get("ci") or {}).get("accuracy", [0.0])[0]
            # an accuracy whose 95% CI reaches down to chance is no evidence of learning
            summary[organ]["above_chance"] = bool(lo > summary[organ]["chance"])
    summary["stages"] = clock.table
    summary["wall_s"] = round(time.time() - t0, 1)
    summary["cpu_s"] = round(StageClock._cpu(), 1)
    summary["peak_rss_gb"] = round(peak_rss_gb(), 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print("\nmedmap demo: test-split results")
    for organ in organs:
        r = summary[organ]
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
        z, q = r["zeroshot"], r["retrieval"]
        zauc = "n/a" if z["auc"] is None else f"{z['auc']:.3f}"
        rr = r["radiomics"]
        print(f"  {organ:5s}  accuracy {r['accuracy']:.3f} (chance {r['chance']:.3f})  "
              f"balanced {r['balanced_accuracy']:.3f}  AUC {auc}  n={r['n_test']}")
        print(f"         radiomics baseline: accuracy {rr['accuracy']:.3f}, AUC "
              + ("n/a" if rr["auc"] is None else f"{rr['auc']:.3f}"))
        print(f"         zero-shot AUC {zauc}, accuracy {z['accuracy']:.3f}; retrieval R@5 "
              f"{q['R@5']:.3f} (chance {q['chance@5']:.3f}, gallery {q['gallery']})")
        if not r["above_chance"]:
            print(f"         smoke test, not a result: the accuracy's 95% CI reaches chance "
                  f"({r['n_test']} test cases); run `medmap demo` for a measurement")
        print(f"         report: {r['report']}")
    print("  time by stage (wall / CPU s): " + "; ".join(
        f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}" for k, v in summary["stages"].items()))
    print(f"  wall time {summary['wall_s']} s (CPU {summary['cpu_s']} s), peak memory "
          f"{summary['peak_rss_gb']} GB")
    return summary
