"""Stage runners: ``pretrain`` (modality-aware VLP) and ``finetune`` (CSA + CCT classifier).

A run folder holds ``config.yaml`` (the resolved config), ``run_info.json`` (medmap version,
git commit, start time), ``logs/`` (CSV) and ``tensorboard/``, ``checkpoints/`` (every epoch
plus ``last.ckpt``), ``model/`` (safetensors + config.json, see :mod:`medmap.models.hub`) and
``metrics.json``.

Example:
    >>> from medmap.train.run import ExperimentConfig, pretrain, finetune
    >>> cfg = ExperimentConfig()                                     # doctest: +SKIP
    >>> cfg.data.manifest = "sim/manifest.jsonl"                     # doctest: +SKIP
    >>> experts = pretrain(cfg, "runs/pretrain")                     # doctest: +SKIP
    >>> model_dir = finetune(cfg, "runs/finetune", init=experts)     # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmap.config import save_config
from medmap.data.augment import AugmentConfig
from medmap.data.manifest import Manifest, ManifestError
from medmap.data.preprocess import PreprocessConfig
from medmap.data.vocab import get_organ
from medmap.mg3d.model import MG3DConfig
from medmap.models.medmap import MedMAPConfig
from medmap.train.engine import OptimConfig


@dataclass
class DataConfig:
    """Which cases and how they are preprocessed."""

    manifest: str = ""
    organ: str = "liver"
    modalities: list[str] = field(default_factory=list)   # empty: those present in the data
    cache_dir: str | None = None                          # preprocessed-volume cache
    preprocess: PreprocessConfig = field(
        default_factory=lambda: PreprocessConfig(spacing=None, size=(64, 64, 64)))
    validate: bool = True                                 # refuse an invalid manifest
    # random flips / intensity jitter of training batches: MedMAP pre-training and fine-tuning
    # (the MG-3D recipe does not use it yet)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TextConfig:
    """The frozen text encoder."""

    model: str = "minilm"          # "minilm" (bundled), a local folder or a Hub id (BioBERT)
    pooling: str | None = None     # cls / mean; None: the model's own default
    max_length: int = 128
    cache_dir: str | None = None   # on-disk embedding cache


@dataclass
class ExperimentConfig:
    """Everything a MedMAP experiment needs; YAML files in ``configs/`` fill it."""

    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: MedMAPConfig = field(default_factory=MedMAPConfig)
    pretrain: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    finetune: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    # MG-3D pre-training recipe (medmap.train.mg3d.pretrain_mg3d): masking, fusion layers and
    # loss switches / weights (mg3d.losses); encoder / embed_dim / shared_encoder left null
    # follow model.*
    mg3d: MG3DConfig = field(default_factory=MG3DConfig)


# ---------------------------------------------------------------------------------------------
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
        require_valid(manifest, cfg.manifest, required_masks=_roi_keys(cfg.preprocess))
    present = {m for c in manifest for m in c.modalities}
    mods = list(cfg.modalities) or [m for m in spec.modalities if m in present]
    unknown = [m for m in mods if m not in spec.modalities]
    if unknown:
        raise ValueError(f"data.modalities {unknown} are not {cfg.organ} modalities "
                         f"({', '.join(spec.modalities)})")
    return manifest, mods


def augmenter(cfg: DataConfig):
    """The training-batch augmenter of ``cfg.augment`` (None when it is off)."""
    from medmap.data.augment import BatchAugmenter

    return BatchAugmenter(cfg.augment) if cfg.augment.enabled else None


def _roi_keys(pcfg) -> list[str]:
    return [] if pcfg.roi_mask is None else [pcfg.roi_mask]


def build_text_encoder(cfg: TextConfig):
    from medmap.text.encoder import FrozenTextEncoder

    return FrozenTextEncoder(cfg.model, pooling=cfg.pooling, max_length=cfg.max_length,
                             cache_dir=cfg.cache_dir)


def build_loader(cfg: DataConfig):
    from medmap.data.datasets import VolumeCache
    from medmap.data.preprocess import Preprocessor

    return VolumeCache(cfg.cache_dir, Preprocessor(cfg.preprocess)) if cfg.cache_dir else \
        Preprocessor(cfg.preprocess)


def complete_model_config(cfg: ExperimentConfig, modalities: list[str], text_dim: int,
                          encoder=None) -> MedMAPConfig:
    """Fill the data-dependent fields: organ, modalities, classes, text_dim, prompts."""
    from medmap.text.prompts import modality_prompt

    spec = get_organ(cfg.data.organ)
    m = MedMAPConfig(**{**cfg.model.__dict__})
    m.organ, m.modalities, m.classes, m.text_dim = spec.name, list(modalities), list(spec.classes), text_dim
    m.prompts = {mod: cfg.model.prompts.get(mod) or modality_prompt(mod, spec.name)
                 for mod in modalities}
    return m


def prepare_run_dir(run_dir: str | Path, cfg: ExperimentConfig, stage: str,
                    resume: bool) -> Path:
    from medmap import __version__
    from medmap.models.hub import git_commit
    from medmap.train.engine import last_checkpoint

    run = Path(run_dir)
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


def _metrics(trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1}


def _model_meta(cfg: ExperimentConfig, encoder) -> dict[str, Any]:
    return {"preprocess": cfg.data.preprocess.to_dict(),
            "text_model": {"name": cfg.text.model, "identity": encoder.identity},
            "organ": cfg.data.organ}


def pair_datasets(cfg: DataConfig) -> tuple[list[str], dict[str, Any]]:
    """Modality list and the train / val (volume, report) pair datasets of a pre-training run;
    a ``ManifestError`` when the train split has no pair."""
    from medmap.data.datasets import ModalityPairDataset

    manifest, mods = load_cases(cfg)
    loader = build_loader(cfg)
    ds = {s: ModalityPairDataset(manifest, loader, modalities=mods, split=s)
          for s in ("train", "val")}
    if len(ds["train"]) == 0:
        raise ManifestError([f"no (volume, report) pairs in the train split of {cfg.manifest};"
                             " pre-training needs per-modality reports"])
    return mods, ds


# ---------------------------------------------------------------------------------------------
def pretrain(cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False,
             callbacks: list | None = None) -> Path:
    """Stage 1: modality-aware contrastive pre-training; returns the saved model folder."""
    import lightning as L

    from medmap.models.hub import save_pretrained
    from medmap.models.medmap import ModalityAwareCLIP
    from medmap.train.data import PairCollator, StageDataModule, TextTable
    from medmap.train.engine import build_trainer, last_checkpoint
    from medmap.train.modules import PretrainModule

    run = prepare_run_dir(run_dir, cfg, "pretrain", resume)
    mods, ds = pair_datasets(cfg.data)
    encoder = build_text_encoder(cfg.text)
    table = TextTable(encoder, [p[3] for d in ds.values() for p in d.pairs])
    L.seed_everything(cfg.pretrain.seed, workers=True, verbose=False)
    mcfg = complete_model_config(cfg, mods, encoder.hidden_size)
    module = PretrainModule(ModalityAwareCLIP(mcfg), cfg.pretrain)
    module.augment = augmenter(cfg.data)
    collate = PairCollator(table, mods)
    # one modality per batch: full in-modality negatives (the loss is per modality anyway)
    groups = [mods.index(p[1]) for p in ds["train"].pairs]
    dm = StageDataModule(ds["train"], ds["val"], collate, cfg.pretrain.batch_size,
                         cfg.pretrain.num_workers, cfg.pretrain.seed, train_groups=groups)
    trainer = build_trainer(run, cfg.pretrain, extra_callbacks=callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=last_checkpoint(run) if resume else None)
    out = run / "model"
    if trainer.is_global_zero:
        save_pretrained(module.model, out, **_model_meta(cfg, encoder))
        (run / "metrics.json").write_text(json.dumps(_metrics(trainer), indent=2))
    return out


def finetune(cfg: ExperimentConfig, run_dir: str | Path, init: str | Path | None = None,
             resume: bool = False, callbacks: list | None = None) -> Path:
    """Stage 2: fine-tune the MedMAP classifier; ``init`` = a pre-trained model folder (the
    +MAVLP setting) or None (random experts). Returns the saved model folder."""
    import lightning as L

    from medmap.data.datasets import CaseDataset
    from medmap.models.hub import save_pretrained
    from medmap.models.medmap import MedMAPClassifier, load_pretrained_experts
    from medmap.train.data import CaseCollator, StageDataModule, TextTable
    from medmap.train.engine import build_trainer, last_checkpoint
    from medmap.train.modules import FinetuneModule

    run = prepare_run_dir(run_dir, cfg, "finetune", resume)
    manifest, mods = load_cases(cfg.data)
    unlabelled = [c.case_id for c in manifest.select(split="train") if c.label is None]
    if unlabelled:
        raise ManifestError([f"case {cid!r}: label: missing in the train split; fine-tuning needs "
                             "a label for every training case" for cid in unlabelled],
                            cfg.data.manifest)
    loader = build_loader(cfg.data)
    ds = {s: CaseDataset(manifest, loader, modalities=mods, split=s) for s in ("train", "val")}
    if len(ds["train"]) == 0:
        raise ManifestError([f"no train cases in {cfg.data.manifest}"])
    encoder = build_text_encoder(cfg.text)
    mcfg = complete_model_config(cfg, mods, encoder.hidden_size)
    prompt_emb = encoder.encode([mcfg.prompts[m] for m in mods]).float()     # (M, text_dim)
    collate = CaseCollator(None, mcfg.organ, mcfg.classes, mods)
    texts = [collate.texts({"reports": [c.reports], "label": torch.tensor([c.label_index])})[0]
             for c in ds["train"].cases]  # train cases are all labelled (checked above)
    collate.table = TextTable(encoder, texts)
    L.seed_everything(cfg.finetune.seed, workers=True, verbose=False)
    model = MedMAPClassifier(mcfg, prompt_emb)
    if init:
        load_pretrained_experts(model, str(init))
    module = FinetuneModule(model, cfg.finetune)
    module.augment = augmenter(cfg.data)
    val_collate = CaseCollator(None, mcfg.organ, mcfg.classes, mods)
    dm = StageDataModule(ds["train"], ds["val"], collate, cfg.finetune.batch_size,
                         cfg.finetune.num_workers, cfg.finetune.seed, val_collate=val_collate)
    trainer = build_trainer(run, cfg.finetune, monitor="val/acc" if len(ds["val"]) else None,
                            extra_callbacks=callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=last_checkpoint(run) if resume else None)
    out = run / "model"
    if trainer.is_global_zero:
        save_pretrained(module.model, out, init=str(init) if init else None,
                        **_model_meta(cfg, encoder))
        (run / "metrics.json").write_text(json.dumps(_metrics(trainer), indent=2))
    return out


__all__ = ["ExperimentConfig", "DataConfig", "TextConfig", "pretrain", "finetune", "load_cases"]
