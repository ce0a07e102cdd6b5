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

import json
import os
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
from medmap.demo_workers import StageClock, own_peak_rss_gb, peak_rss_gb, shared_workers
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
    # with two or more organs and cores: train the organs side by side, one worker process per
    # share of the cores (on two cores, one torch thread each: the same work in ~0.7x the CPU
    # time of two threads in one process); False: one organ after the other in this process
    parallel_organs: bool = True

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


def language_summary(zs: dict[str, Any], rt: dict[str, Any]) -> dict[str, Any]:
    """``summary[organ]["zeroshot"]`` / ``["retrieval"]`` (per-sequence, report -> volume,
    averaged over sequences) of the demo's summary.json."""
    r2v = rt["per_sequence"]["report_to_volume"]
    return {"zeroshot": {"auc": zs["auc"], "ci": zs["ci"], "accuracy": zs["accuracy"]},
            "retrieval": {**{f"R@{k}": r2v[f"R@{k}"] for k in (1, 5, 10)},
                          **{f"chance@{k}": r2v[f"chance@{k}"] for k in (1, 5, 10)},
                          "gallery": int(round(rt["per_sequence"]["gallery"]))}}


# what the demo's workers import (preprocessing, training, text, radiomics): imported once
# here before they are forked instead of once in each
WORKER_IMPORTS = ("monai", "lightning", "transformers", "mirp", "sklearn.linear_model")


def _say(line: str) -> None:
    """Print one line in one write (organs side by side share the terminal)."""
    import sys

    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _organ_training(organ: str, cfg: ExperimentConfig, manifest: Path, runs: Path,
                    s: DemoSettings, seed: int, t0: float, pool=None) -> dict[str, Any]:
    """One organ's preprocessing, pre-training, fine-tuning, zero-shot and retrieval."""
    from medmap.downstream.retrieval import retrieval
    from medmap.downstream.vlm import load_vlm
    from medmap.downstream.zeroshot import zeroshot
    from medmap.train.medmap import finetune, pretrain

    clock = StageClock()
    _say(f"[2/5] {organ}: modality-aware pre-training (up to {s.pretrain_epochs} epochs) "
          f"[{time.time() - t0:.0f} s]")
    with clock(f"{organ}: preprocessing (volume cache)"):
        _warm_organ(cfg, manifest, pool)  # every split once: training, zero-shot, evaluation
    with clock(f"{organ}: pre-training"):
        pre = pretrain(cfg, runs / "pretrain", overwrite=True)   # the demo owns its folder
    _say(f"[3/5] {organ}: fine-tuning MedMAP ({s.finetune_epochs[organ]} epochs) "
          f"[{time.time() - t0:.0f} s]")
    with clock(f"{organ}: fine-tuning"):
        finetune(cfg, runs / "finetune", init=pre, overwrite=True)
    _say(f"[4/5] {organ}: zero-shot and retrieval with the pre-trained model "
          f"[{time.time() - t0:.0f} s]")
    with clock(f"{organ}: zero-shot and retrieval"):
        # one loaded model for both, its text encoder reading the run's text-embedding cache
        # (the class prompts were encoded in training)
        vlm = load_vlm(pre, seed=seed)
        vlm.text_encoder(cache_dir=cfg.text.cache_dir)
        zs = zeroshot(vlm, manifest, split="test", out_dir=runs / "zeroshot",
                      cache_dir=cfg.data.cache_dir, n_boot=s.n_boot, seed=seed,
                      batch_size=s.eval_batch_size)
        rt = retrieval(vlm, manifest, split="test", out_dir=runs / "retrieval",
                       cache_dir=cfg.data.cache_dir, seed=seed, batch_size=s.eval_batch_size)
    return {"pre": pre, "zs": zs, "rt": rt, "stages": clock.table,
            "process": (os.getpid(), own_peak_rss_gb())}


def _organ_radiomics(organ: str, manifest: Path, runs: Path, s: DemoSettings, seed: int,
                     t0: float, pool=None) -> dict[str, Any]:
    """One organ's radiomics baseline (it needs only the simulated data)."""
    from medmap.baselines.radiomics import run_radiomics

    clock = StageClock()
    _say(f"[5/5] {organ}: radiomics baseline [{time.time() - t0:.0f} s]")
    with clock(f"{organ}: radiomics baseline"):
        rad = run_radiomics(manifest, organ, runs / "radiomics", n_boot=s.n_boot, seed=seed,
                            pool=pool)
    return {"rad": rad, "stages": clock.table, "process": (os.getpid(), own_peak_rss_gb())}


def _organ_evaluation(organ: str, cfg: ExperimentConfig, manifest: Path, runs: Path,
                      s: DemoSettings, t0: float, trained: dict[str, Any],
                      radiomics: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned model on the test split, beside the language results and the baseline:
    the organ's report and its part of summary.json."""
    from medmap.eval.curves import read_curves
    from medmap.eval.evaluate import evaluate

    clock = StageClock()
    rad, zs, rt = radiomics["rad"], trained["zs"], trained["rt"]
    _say(f"[5/5] {organ}: evaluation on the test split [{time.time() - t0:.0f} s]")
    with clock(f"{organ}: evaluation and report"):
        res = evaluate(runs / "finetune", manifest, split="test", n_boot=s.n_boot,
                       cache_dir=cfg.data.cache_dir, batch_size=s.eval_batch_size,
                       language={"zeroshot": zs, "retrieval": rt, "model": str(trained["pre"])},
                       baselines={"radiomics + logistic regression": {
                           **rad, "note": f"{rad['n_features']} IBSI features "
                                          f"({rad['library']}) of the lesion per sequence"}})
    m = res["metrics"]
    epochs = len(read_curves(runs / "pretrain").get("val/retrieval_r5", []))
    part = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "auc": m["auc"], "n_test": m["n"], "chance": 1 / len(m["classes"]),
            "ci": m.get("ci"), "report": str(res["files"]["report"]),
            "pretrain_epochs_run": epochs,
            "radiomics": {k: rad["metrics"][k] for k in ("accuracy", "auc", "ci")},
            **language_summary(zs, rt)}
    lo = (m.get("ci") or {}).get("accuracy", [0.0])[0]
    # an accuracy whose 95% CI reaches down to chance is no evidence of learning
    part["above_chance"] = bool(lo > part["chance"])
    return {"organ": organ, "summary": part, "stages": clock.table,
            "process": (os.getpid(), own_peak_rss_gb())}


def _organs_in_turn(organs, cfgs, manifest, out, s, seed, t0, pool) -> list[dict[str, Any]]:
    """Every organ's stages one after the other in this process (its torch threads on every
    core), the pool's workers preprocessing and extracting radiomics."""
    done = []
    for organ in organs:
        runs = out / "runs" / organ
        trained = _organ_training(organ, cfgs[organ], manifest, runs, s, seed, t0, pool)
        rad = _organ_radiomics(organ, manifest, runs, s, seed, t0, pool)
        done += [trained, rad, _organ_evaluation(organ, cfgs[organ], manifest, runs, s, t0,
                                                 trained, rad)]
    return done


def _organs_side_by_side(organs, cfgs, manifest, out, s, seed, t0, pool) -> list[dict[str, Any]]:
    """The organs trained side by side, one per worker (each on its share of the cores: on two
    cores one thread each, which does ~1.4x the work per CPU second of two threads in one
    process); the radiomics baselines queue behind the trainings and run on the first worker
    free (the organs are listed largest first, so that is the last organ's), and each organ's
    evaluation as soon as its training and its baseline are done."""
    from concurrent.futures import FIRST_COMPLETED, wait

    runs = {o: out / "runs" / o for o in organs}
    train = {o: pool.submit(_organ_training, o, cfgs[o], manifest, runs[o], s, seed, t0)
             for o in organs}
    rad = {o: pool.submit(_organ_radiomics, o, manifest, runs[o], s, seed, t0)
           for o in reversed(organs)}
    jobs = [*train.values(), *rad.values()]
    evals: dict[str, Any] = {}
    while len(evals) < len(organs):
        wait([f for f in jobs if not f.done()], return_when=FIRST_COMPLETED)
        for f in jobs:
            if f.done():
                f.result()                               # a failed organ stops the demo here
        for o in organs:
            if o not in evals and train[o].done() and rad[o].done():
                evals[o] = pool.submit(_organ_evaluation, o, cfgs[o], manifest, runs[o], s, t0,
                                       train[o].result(), rad[o].result())
                jobs.append(evals[o])
    return [f.result() for f in jobs]


def run_demo(out_dir: str | Path = "medmap-demo", full: bool = False, seed: int = 0,
             settings: DemoSettings | None = None, organs: tuple[str, ...] | None = None,
             quick: bool = False, side_by_side: bool | None = None) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``OUT/summary.json``) the headline metrics.
    ``organs``: the organs to run (None: the settings' own, both for the default demo, the
    brain for ``quick``); ``side_by_side``: train the organs side by side, one worker process
    per share of the cores (None: the settings' ``parallel_organs``; it needs two organs and
    two cores), or one after the other in this process (False)."""
    from concurrent.futures.process import BrokenProcessPool

    from medmap.data.sim import SimConfig, simulate

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
    cfgs = {o: demo_config(o, manifest, out / "cache", s, seed) for o in organs}
    side_by_side = (s.parallel_organs if side_by_side is None else side_by_side) and len(organs) > 1
    if side_by_side:          # two runs' progress bars would overwrite each other: one line
        for cfg in cfgs.values():                 # per epoch instead
            for stage in (cfg.pretrain, cfg.finetune):
                stage.progress = "epochs" if stage.progress is True else stage.progress
    # one pool of worker processes (started once) for every organ's jobs, instead of one per job
    with shared_workers(len(organs) if side_by_side else None, preload=WORKER_IMPORTS) as pool:
        if pool is not None and side_by_side:
            try:
                done = _organs_side_by_side(organs, cfgs, manifest, out, s, seed, t0, pool)
            except BrokenProcessPool:
                raise UserError("a worker process of `medmap demo` died while the organs "
                                "trained side by side (out of memory?); run it again with "
                                "--in-turn (one organ after the other, about half the memory)"
                                ) from None
        else:
            side_by_side = False
            done = _organs_in_turn(organs, cfgs, manifest, out, s, seed, t0, pool)
    for job in done:
        clock.table.update(job["stages"])
    parts = {job["organ"]: job["summary"] for job in done if "summary" in job}
    for organ in organs:
        summary[organ] = parts[organ]
    summary["stages"] = {k: clock.table[k] for k in ["simulation"] + [
        f"{o}: {stage}" for o in organs for stage in (
            "preprocessing (volume cache)", "pre-training", "fine-tuning",
            "zero-shot and retrieval", "radiomics baseline", "evaluation and report")]}
    summary["organs_side_by_side"] = side_by_side
    summary["wall_s"] = round(time.time() - t0, 1)
    summary["cpu_s"] = round(StageClock._cpu(), 1)
    # side by side: every process's own peak added up (the most that could be resident at
    # once); in turn: the largest process's
    peaks = {pid: gb for pid, gb in (job["process"] for job in done)}
    summary["peak_rss_gb"] = round(own_peak_rss_gb() + sum(peaks.values()) if side_by_side
                                   else peak_rss_gb(), 2)
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
