"""One stage runner for every recipe: prepare -> data -> text table -> model -> trainer -> save.

A recipe stage (:mod:`medmap.train.medmap`: MedMAP pre-training and fine-tuning;
:mod:`medmap.train.mg3d`: MG-3D pre-training) is a :class:`Stage` subclass that says, step by
step, what its data, text features, model, Lightning module and data module are;
:func:`run_stage` runs the steps in the same order for all of them and writes the run folder:

* ``config.yaml`` (the resolved config), ``run_info.json`` (stage, medmap version, git commit,
  start time, torch version);
* ``logs/`` (CSV) and ``tensorboard/``; ``checkpoints/`` (every epoch plus ``last.ckpt``);
* ``model/`` (safetensors + config.json, :mod:`medmap.models.hub`) and ``metrics.json``.

Example:
    >>> from medmap.train.medmap import FinetuneStage
    >>> model_dir = run_stage(cfg, "runs/finetune", FinetuneStage(init="runs/pretrain/model"))  # doctest: +SKIP
"""

from __future__ import annotations

import abc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medmap.config import ConfigError, UserError, save_config
from medmap.data.manifest import Manifest, ManifestError
from medmap.data.vocab import get_organ
from medmap.train.config import DataConfig, ExperimentConfig, TextConfig, check_derived_fields
from medmap.train.engine import OptimConfig, build_trainer, last_checkpoint


# ---- helpers every stage uses ----------------------------------------------------------------
def load_cases(cfg: DataConfig) -> tuple[Manifest, list[str]]:
    """The organ's cases (validated unless disabled) and the modality list to use."""
    from medmap.data.validate import require_valid

    if not cfg.manifest:
        raise ManifestError(["data.manifest is empty; point it at a JSONL manifest"])
    manifest = Manifest.load(cfg.manifest).select(organ=cfg.organ)
    spec = get_organ(cfg.organ)
    if len(manifest) == 0:
        raise ManifestError([f"no {cfg.organ} cases in {cfg.manifest}; check data.organ"])
    if cfg.validate:
        require_valid(manifest, cfg.manifest,
                      required_masks=[] if cfg.preprocess.roi_mask is None
                      else [cfg.preprocess.roi_mask],
                      memo_dir=Path(cfg.cache_dir) / "checks" if cfg.cache_dir else None)
    present = {m for c in manifest for m in c.modalities}
    mods = list(cfg.modalities) or [m for m in spec.modalities if m in present]
    unknown = [m for m in mods if m not in spec.modalities]
    if unknown:
        raise ConfigError(f"data.modalities {unknown} are not {cfg.organ} modalities "
                          f"({', '.join(spec.modalities)})")
    return manifest, mods


def warm_cache(*datasets, pool=None) -> int:
    """Fill the volume cache of ``datasets`` (sharing one cache) before training, with one
    process per CPU core (``pool``: already started workers to use), so the first epoch costs
    what the others do; returns how many volumes were preprocessed."""
    from medmap.data.datasets import cache_requests

    ds = [d for d in datasets if d is not None and len(d)]
    if not ds:
        return 0
    return ds[0].cache.warm([r for d in ds for r in cache_requests(d)], pool=pool)


def augmenter(cfg: DataConfig):
    """The training-batch augmenter of ``cfg.augment`` (None when it is off)."""
    from medmap.data.augment import BatchAugmenter

    return BatchAugmenter(cfg.augment) if cfg.augment.enabled else None


def build_text_encoder(cfg: TextConfig):
    """The frozen text encoder of ``cfg`` (with its on-disk embedding cache)."""
    from medmap.text.encoder import FrozenTextEncoder

    return FrozenTextEncoder(cfg.model, pooling=cfg.pooling, max_length=cfg.max_length,
                             cache_dir=cfg.cache_dir)


def build_loader(cfg: DataConfig):
    """The volume loader: a :class:`VolumeCache` when ``cache_dir`` is set, else the bare
    :class:`Preprocessor`."""
    from medmap.data.cache import VolumeCache
    from medmap.data.preprocess import Preprocessor

    return VolumeCache(cfg.cache_dir, Preprocessor(cfg.preprocess)) if cfg.cache_dir else \
        Preprocessor(cfg.preprocess)


# what a training stage writes into its run folder (removed by overwrite)
RUN_OUTPUTS = ("checkpoints", "model", "logs", "tensorboard", "metrics.json", "run_info.json",
               "config.yaml")


def run_held(run: Path) -> list[str]:
    """What makes ``run`` hold a run: checkpoints or a saved model. A folder with only
    ``config.yaml`` / ``run_info.json`` (a start that failed before its first epoch, e.g. on an
    invalid manifest) holds nothing to lose and is reused."""
    held = []
    n_ckpt = len(list((run / "checkpoints").glob("*.ckpt")))
    if n_ckpt:
        held.append(f"checkpoints/ with {n_ckpt} checkpoint(s)")
    if any((run / "model" / n).exists() for n in ("config.json", "model.safetensors")):
        held.append("model/")
    return held


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """A run folder that already holds a run (checkpoints or a saved model) is refused unless
    ``resume`` (continue it) or ``overwrite`` (remove its outputs first) is given."""
    import shutil

    run = Path(run_dir)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: --resume continues the "
                        "run in --run-dir, --overwrite starts it again from scratch")
    held = run_held(run)
    if held and not (resume or overwrite):
        raise UserError(f"--run-dir {run} already holds a run ({', '.join(held)}); pass --resume "
                        "to continue it, --overwrite to replace it, or choose another --run-dir")
    if overwrite:
        for name in RUN_OUTPUTS:
            q = run / name
            if q.is_dir() and not q.is_symlink():
                shutil.rmtree(q)
            elif q.exists() or q.is_symlink():
                q.unlink()


def prepare_run_dir(run_dir: str | Path, cfg: ExperimentConfig, stage: str,
                    resume: bool, overwrite: bool = False) -> Path:
    """Check the run folder (:func:`check_run_dir`), create it and write ``config.yaml`` and
    ``run_info.json``."""
    from medmap import __version__
    from medmap.models.hub import git_commit

    run = Path(run_dir)
    check_run_dir(run, resume, overwrite)
    if resume and last_checkpoint(run) is None:
        raise FileNotFoundError(f"--resume: no checkpoints/last.ckpt in {run}; "
                                "start the run without --resume")
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    info = {"stage": stage, "medmap_version": __version__, "git_commit": git_commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed": resume,
            "torch": torch.__version__}
    (run / "run_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return run


def record_hardware(run: Path, trainer) -> None:
    """Add what the run computes on to ``run_info.json``: the resolved Lightning precision
    (``auto``: ``bf16-mixed`` on a CPU with native bf16, ``32-true`` on a GPU), the accelerator,
    on a GPU its name, and ``fp32_conv_map_edge`` where bf16-mixed ran the convolutions on maps
    up to that edge in fp32 (:mod:`medmap.train.bf16_guard`)."""
    path = run / "run_info.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    acc = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
    info.update(precision=str(trainer.precision), accelerator=acc,
                device=torch.cuda.get_device_name() if acc == "cuda" else "cpu")
    from medmap.train.bf16_guard import SmallMapFP32

    guard = [c.max_edge for c in trainer.callbacks if isinstance(c, SmallMapFP32)]
    if guard:               # bf16-mixed with the convolutions on maps up to this edge in fp32
        info["fp32_conv_map_edge"] = guard[0]
    path.write_text(json.dumps(info, indent=2), encoding="utf-8")


def _best_checkpoint(run: Path) -> Path | None:
    p = run / "checkpoints" / "best.ckpt"
    return p if p.exists() else None


def trainer_metrics(trainer) -> dict[str, float]:
    """The trainer's last logged scalar metrics."""
    return {k: float(v) for k, v in trainer.callback_metrics.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1}


def model_meta(cfg: ExperimentConfig, encoder, manifest: Manifest | None = None) -> dict[str, Any]:
    """What a model folder stores besides the architecture: preprocessing, text model, organ,
    and the training data (manifest, its size per split)."""
    meta: dict[str, Any] = {"preprocess": cfg.data.preprocess.to_dict(),
                            "text_model": {"name": cfg.text.model, "identity": encoder.identity},
                            "organ": cfg.data.organ, "data_manifest": str(cfg.data.manifest)}
    if manifest is not None:
        meta["data_cases"] = len(manifest)
        meta["data_splits"] = {s: len(manifest.select(split=s))
                               for s in sorted({c.split for c in manifest})}
    return meta


def pair_datasets(cfg: DataConfig, append_global: bool = False) -> StageData:
    """Modality list and the train / val (volume, report) pair datasets of a pre-training run;
    ``append_global`` appends each case's global impression to its sequence reports. A
    ``ManifestError`` when the train split has no pair."""
    from medmap.data.datasets import ModalityPairDataset

    manifest, mods = load_cases(cfg)
    loader = build_loader(cfg)
    ds = {s: ModalityPairDataset(manifest, loader, modalities=mods, split=s,
                                 append_global=append_global)
          for s in ("train", "val")}
    if len(ds["train"]) == 0:
        raise ManifestError([f"no (volume, report) pairs in the train split of {cfg.manifest};"
                             " pre-training needs per-modality reports"])
    return StageData(mods, ds["train"], ds["val"], manifest)


# ---- the stage contract and its runner --------------------------------------------------------
@dataclass
class StageData:
    """What a stage's data step returns: the modalities and the train / val datasets."""

    modalities: list[str]
    train: Any
    val: Any
    manifest: Manifest | None = None


class Stage(abc.ABC):
    """One training stage of a recipe; :func:`run_stage` calls the steps in order.

    Subclasses set ``name`` (recorded in ``run_info.json``) and ``section`` (the
    :class:`ExperimentConfig` field holding the stage's :class:`OptimConfig`), and implement
    :meth:`data`, :meth:`texts`, :meth:`model`, :meth:`module` and :meth:`datamodule`.
    """

    name = "stage"
    section = "pretrain"
    monitor: str | None = None          # checkpoint "best" by this metric (max) when set

    def optim(self, cfg: ExperimentConfig) -> OptimConfig:
        return getattr(cfg, self.section)

    def check(self, cfg: ExperimentConfig) -> None:
        """Refuse settings the stage cannot honour (before anything is written)."""
        check_derived_fields(cfg)

    @abc.abstractmethod
    def data(self, cfg: ExperimentConfig) -> StageData:
        """The modalities and datasets of the stage."""

    @abc.abstractmethod
    def texts(self, cfg: ExperimentConfig, data: StageData, encoder) -> Any:
        """The frozen text features the stage needs, computed once before training."""

    @abc.abstractmethod
    def model(self, cfg: ExperimentConfig, data: StageData, encoder, texts) -> torch.nn.Module:
        """The model to train (built after the RNG is seeded with the stage's seed)."""

    @abc.abstractmethod
    def module(self, cfg: ExperimentConfig, model: torch.nn.Module):
        """The Lightning module (a :class:`~medmap.train.modules.TrainModule`)."""

    @abc.abstractmethod
    def datamodule(self, cfg: ExperimentConfig, data: StageData, texts):
        """The Lightning data module (train / val loaders)."""

    def save_meta(self) -> dict[str, Any]:
        """Extra entries of the saved model's ``config.json``."""
        return {}


def run_stage(cfg: ExperimentConfig, run_dir: str | Path, stage: Stage, resume: bool = False,
              callbacks: list | None = None, overwrite: bool = False) -> Path:
    """Run ``stage`` of ``cfg`` into ``run_dir``; returns the saved model folder.

    ``resume`` continues from ``RUN/checkpoints/last.ckpt`` (weights, optimiser, scheduler,
    epoch, sampler order, RNG states; loaded with ``weights_only=True``); ``overwrite`` replaces
    a run the folder already holds (otherwise refused); ``callbacks`` are extra Lightning
    callbacks.
    """
    import lightning as L

    from medmap.models.hub import save_pretrained

    stage.check(cfg)
    optim = stage.optim(cfg)
    run = prepare_run_dir(run_dir, cfg, stage.name, resume, overwrite)
    data = stage.data(cfg)
    warm_cache(data.train, data.val)          # every volume preprocessed once, in parallel
    encoder = build_text_encoder(cfg.text)
    texts = stage.texts(cfg, data, encoder)
    L.seed_everything(optim.seed, workers=True, verbose=False)
    model = stage.model(cfg, data, encoder, texts)
    module = stage.module(cfg, model)
    module.augment = augmenter(cfg.data)
    dm = stage.datamodule(cfg, data, texts)
    monitor = stage.monitor if stage.monitor and data.val is not None and len(data.val) else None
    trainer = build_trainer(run, optim, monitor=monitor, extra_callbacks=callbacks)
    if trainer.is_global_zero:
        record_hardware(run, trainer)
    trainer.fit(module, datamodule=dm, ckpt_path=last_checkpoint(run) if resume else None,
                weights_only=True)
    out = run / "model"
    if trainer.is_global_zero:
        best = _best_checkpoint(run) if monitor and optim.early_stop_patience > 0 else None
        if best is not None:       # early stopping: the best epoch's weights, not the last
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        save_pretrained(module.model, out, **stage.save_meta(),
                        **model_meta(cfg, encoder, data.manifest))
        (run / "metrics.json").write_text(json.dumps(trainer_metrics(trainer), indent=2))
    return out


__all__ = ["Stage", "StageData", "run_stage", "check_run_dir", "load_cases", "pair_datasets",
           "augmenter", "build_text_encoder", "build_loader", "prepare_run_dir",
           "trainer_metrics", "model_meta", "warm_cache"]
