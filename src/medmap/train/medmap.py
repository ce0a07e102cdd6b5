"""The MedMAP recipe's stages: modality-aware pre-training and CSA + CCT fine-tuning.

* :class:`PretrainStage` / :func:`pretrain`: per-modality symmetric InfoNCE between each
  sequence's expert and the projected report text (:class:`PretrainModule`);
* :class:`FinetuneStage` / :func:`finetune`: the MedMAP classifier with BCE + KL and the ramp
  weights (:class:`FinetuneModule`), optionally from pre-trained experts.

Both run through :func:`medmap.train.stage.run_stage` (run-folder layout there).

Example:
    >>> from medmap.train.medmap import pretrain, finetune
    >>> experts = pretrain(cfg, "runs/pretrain")                     # doctest: +SKIP
    >>> model_dir = finetune(cfg, "runs/finetune", init=experts)     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmap.data.manifest import ManifestError
from medmap.data.vocab import get_organ
from medmap.losses.contrastive import ModalityContrastiveLoss, modality_contrastive_loss
from medmap.losses.medmap import MedMAPLoss
from medmap.models.medmap import (MedMAPClassifier, MedMAPConfig, ModalityAwareCLIP,
                                  load_pretrained_experts)
from medmap.train.config import ExperimentConfig
from medmap.train.data import CaseCollator, PairCollator, StageDataModule, TextTable
from medmap.train.engine import OptimConfig
from medmap.train.modules import TrainModule, per_modality_top1
from medmap.train.stage import (Stage, StageData, build_loader, load_cases, pair_datasets,
                                 run_stage)


def complete_model_config(cfg: ExperimentConfig, modalities: list[str],
                          text_dim: int) -> MedMAPConfig:
    """``cfg.model`` with the data-dependent fields filled: organ, modalities, classes,
    text_dim, prompts."""
    from medmap.text.prompts import modality_prompt

    spec = get_organ(cfg.data.organ)
    m = MedMAPConfig(**{**cfg.model.__dict__})
    m.organ, m.modalities, m.classes, m.text_dim = spec.name, list(modalities), list(spec.classes), text_dim
    m.prompts = {mod: cfg.model.prompts.get(mod) or modality_prompt(mod, spec.name)
                 for mod in modalities}
    return m


# ---- Lightning modules ------------------------------------------------------------------------
class PretrainModule(TrainModule):
    """Stage 1: per-modality symmetric InfoNCE between experts and the projected report text.

    Batch: ``image`` (B,1,D,H,W), ``model_modality`` (B,) index into the model's modalities,
    ``text`` (B, text_dim) frozen report embeddings.
    """

    model: ModalityAwareCLIP

    def __init__(self, model: ModalityAwareCLIP, optim: OptimConfig):
        super().__init__(model, ModalityContrastiveLoss(), optim)

    def _forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.model(batch["image"], batch["model_modality"], batch["text"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = self._augmented(batch, batch_idx)
        res = self.loss(**self._forward(batch))
        bs = batch["image"].shape[0]
        terms = {"contrastive_loss": res["contrastive_loss"],
                 "temperature": 1.0 / self.model.logit_scale.exp().detach()}
        for m, v in res["per_modality"].items():
            terms[f"{self.model.cfg.modalities[m]}_loss"] = v
        self._log_terms("train", terms, bs, prog_bar=False)
        self.log("train/loss", res["loss"].detach(), batch_size=bs, prog_bar=True)
        return res["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._forward(batch)
        self._val.append((out["image_features"].float(), out["text_features"].float(),
                          out["modality"]))

    def on_validation_epoch_end(self) -> None:
        gathered = self._gather_val()
        if gathered is None:
            return
        v, t, m = gathered
        res = modality_contrastive_loss(v, t, m, self.model.logit_scale.exp(), gather=False)
        n = max(1, int(sum((m == k).sum() for k in res["per_modality"])))
        self.log("val/contrastive_loss", res["contrastive_loss"], sync_dist=False)
        self.log("val/retrieval_top1", res["v2t_correct"].float() / n, prog_bar=True)
        for k, acc in per_modality_top1(v, t, m).items():
            self.log(f"val/{self.model.cfg.modalities[k]}_retrieval_top1", acc)


class FinetuneModule(TrainModule):
    """Stage 2: ``lambda_c * BCE + lambda_s * KL(f_t, f_fusion)`` with the epoch ramps.

    Batch: ``images`` (B,M,1,D,H,W), ``present`` (B,M), ``label`` (B,), ``text`` (B, text_dim)
    frozen embedding of the case report (or class prompt), used only by the KL term.
    """

    model: MedMAPClassifier

    def __init__(self, model: MedMAPClassifier, optim: OptimConfig):
        super().__init__(model, MedMAPLoss(optim.loss_ramp_epochs or optim.epochs), optim)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = self._augmented(batch, batch_idx)
        out = self.model(batch["images"], batch["present"], text=batch["text"])
        terms = self.loss(**out, labels=batch["label"], epoch=self.current_epoch)
        bs = batch["label"].shape[0]
        acc = (out["logits"].argmax(-1) == batch["label"]).float().mean()
        self._log_terms("train", {**{k: v for k, v in terms.items() if k != "loss"}, "acc": acc}, bs)
        self.log("train/loss", terms["loss"].detach(), batch_size=bs, prog_bar=True)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.model(batch["images"], batch["present"])
        self._val.append((out["probs"].float(), batch["label"]))

    def on_validation_epoch_end(self) -> None:
        gathered = self._gather_val()
        if gathered is None:
            return
        p, y = gathered
        from medmap.metrics import classification_metrics

        met = classification_metrics(y.cpu().numpy(), p.cpu().numpy())
        self.log("val/acc", met["accuracy"], prog_bar=True)
        self.log("val/auc", float(np.nan_to_num(met["auc"], nan=0.5)), prog_bar=True)
        self.log("val/balanced_acc", met["balanced_accuracy"])


# ---- stages -----------------------------------------------------------------------------------
class PretrainStage(Stage):
    """Modality-aware contrastive pre-training of the experts."""

    name, section = "pretrain", "pretrain"

    def data(self, cfg: ExperimentConfig) -> StageData:
        return pair_datasets(cfg.data)

    def texts(self, cfg: ExperimentConfig, data: StageData, encoder) -> TextTable:
        return TextTable(encoder, [p[3] for d in (data.train, data.val) for p in d.pairs])

    def model(self, cfg: ExperimentConfig, data: StageData, encoder, texts) -> ModalityAwareCLIP:
        self.mcfg = complete_model_config(cfg, data.modalities, encoder.hidden_size)
        return ModalityAwareCLIP(self.mcfg)

    def module(self, cfg: ExperimentConfig, model: ModalityAwareCLIP) -> PretrainModule:
        return PretrainModule(model, cfg.pretrain)

    def datamodule(self, cfg: ExperimentConfig, data: StageData, texts) -> StageDataModule:
        mods = data.modalities
        # one modality per batch: full in-modality negatives (the loss is per modality anyway)
        groups = [mods.index(p[1]) for p in data.train.pairs]
        o = cfg.pretrain
        return StageDataModule(data.train, data.val, PairCollator(texts, mods), o.batch_size,
                               o.num_workers, o.seed, train_groups=groups)


class FinetuneStage(Stage):
    """Fine-tuning of the MedMAP classifier; ``init``: a pre-trained model folder or None."""

    name, section, monitor = "finetune", "finetune", "val/acc"

    def __init__(self, init: str | Path | None = None):
        self.init = init

    def data(self, cfg: ExperimentConfig) -> StageData:
        from medmap.data.datasets import CaseDataset

        manifest, mods = load_cases(cfg.data)
        unlabelled = [c.case_id for c in manifest.select(split="train") if c.label is None]
        if unlabelled:
            raise ManifestError([f"case {cid!r}: label: missing in the train split; fine-tuning "
                                 "needs a label for every training case" for cid in unlabelled],
                                cfg.data.manifest)
        loader = build_loader(cfg.data)
        ds = {s: CaseDataset(manifest, loader, modalities=mods, split=s) for s in ("train", "val")}
        if len(ds["train"]) == 0:
            raise ManifestError([f"no train cases in {cfg.data.manifest}"])
        return StageData(mods, ds["train"], ds["val"], manifest)

    def texts(self, cfg: ExperimentConfig, data: StageData, encoder) -> TextTable:
        mods = data.modalities
        self.mcfg = complete_model_config(cfg, mods, encoder.hidden_size)
        self.prompt_emb = encoder.encode([self.mcfg.prompts[m] for m in mods]).float()  # (M, T)
        collate = CaseCollator(None, self.mcfg.organ, self.mcfg.classes, mods)
        texts = [collate.texts({"reports": [c.reports], "label": torch.tensor([c.label_index])})[0]
                 for c in data.train.cases]  # train cases are all labelled (checked above)
        return TextTable(encoder, texts)

    def model(self, cfg: ExperimentConfig, data: StageData, encoder, texts) -> MedMAPClassifier:
        model = MedMAPClassifier(self.mcfg, self.prompt_emb)
        if self.init:
            load_pretrained_experts(model, str(self.init))
        return model

    def module(self, cfg: ExperimentConfig, model: MedMAPClassifier) -> FinetuneModule:
        return FinetuneModule(model, cfg.finetune)

    def datamodule(self, cfg: ExperimentConfig, data: StageData, texts) -> StageDataModule:
        m, mods, o = self.mcfg, data.modalities, cfg.finetune
        return StageDataModule(data.train, data.val, CaseCollator(texts, m.organ, m.classes, mods),
                               o.batch_size, o.num_workers, o.seed,
                               val_collate=CaseCollator(None, m.organ, m.classes, mods))

    def save_meta(self) -> dict[str, Any]:
        return {"init": str(self.init) if self.init else None}


def pretrain(cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False,
             callbacks: list | None = None) -> Path:
    """Stage 1: modality-aware contrastive pre-training; returns the saved model folder."""
    return run_stage(cfg, run_dir, PretrainStage(), resume, callbacks)


def finetune(cfg: ExperimentConfig, run_dir: str | Path, init: str | Path | None = None,
             resume: bool = False, callbacks: list | None = None) -> Path:
    """Stage 2: fine-tune the MedMAP classifier; ``init`` = a pre-trained model folder (the
    +MAVLP setting) or None (random experts). Returns the saved model folder."""
    return run_stage(cfg, run_dir, FinetuneStage(init), resume, callbacks)


__all__ = ["PretrainStage", "FinetuneStage", "PretrainModule", "FinetuneModule", "pretrain",
           "finetune", "complete_model_config"]
