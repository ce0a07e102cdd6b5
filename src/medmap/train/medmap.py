"""The MedMAP recipe's stages: modality-aware pre-training and CSA + CCT fine-tuning.

* :class:`PretrainStage` / :func:`pretrain`: per-modality symmetric InfoNCE between each
  sequence's expert and the projected report text; with ``model.losses.case_alignment`` and
  training cases that carry a global impression, batches of whole cases add the case-level
  term (the case embedding against the global impression; :class:`PretrainModule`).
  ``pretrain.early_stop_patience`` stops when validation retrieval (mean per-sequence R@5)
  stops improving and saves the best epoch.
* :class:`FinetuneStage` / :func:`finetune`: the MedMAP classifier with BCE + KL and the ramp
  weights (:class:`FinetuneModule`), optionally from pre-trained experts. The class-knowledge
  descriptions (``text.knowledge``) are embedded once into the model's ``class_prompts``
  buffer; ``model.language="random"`` replaces them and the KL targets by fixed random vectors
  of the same norm (the language-removed control).

Both run through :func:`medmap.train.stage.run_stage` (run-folder layout there).

Example:
    >>> from medmap.train.medmap import pretrain, finetune
    >>> experts = pretrain(cfg, "runs/pretrain")                     # doctest: +SKIP
    >>> model_dir = finetune(cfg, "runs/finetune", init=experts)     # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmap.data.manifest import ManifestError
from medmap.data.vocab import GLOBAL_REPORT, get_organ
from medmap.losses.contrastive import ModalityContrastiveLoss, modality_contrastive_loss
from medmap.losses.medmap import MedMAPLoss
from medmap.models.medmap import (MedMAPClassifier, MedMAPConfig, ModalityAwareCLIP,
                                  load_pretrained_experts)
from medmap.train.config import ExperimentConfig
from medmap.train.data import (CaseCollator, CasePairCollator, PairCollator, StageDataModule,
                               TextTable, random_like)
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


def _recall_at(v: torch.Tensor, t: torch.Tensor, m: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over modalities of volume->report Recall@k within each modality."""
    out = []
    for mod in torch.unique(m).tolist():
        sel = m == mod
        sim = v[sel] @ t[sel].t()                                    # (n, n)
        rank = (sim > sim.diagonal()[:, None]).sum(1)                # 0-based rank of the match
        out.append((rank < k).float().mean())
    return torch.stack(out).mean()


# ---- Lightning modules ------------------------------------------------------------------------
class PretrainModule(TrainModule):
    """Stage 1: per-modality symmetric InfoNCE (+ the case-level term on case batches).

    Pair batch: ``image`` (B,1,D,H,W), ``model_modality`` (B,), ``text`` (B, T). Case batch:
    ``images`` (B,M,1,D,H,W), ``present`` (B,M), ``text`` (B,M,T), ``text_mask`` (B,M),
    ``global_text`` (B,T), ``global_mask`` (B,).
    """

    model: ModalityAwareCLIP

    def __init__(self, model: ModalityAwareCLIP, optim: OptimConfig, case_weight: float = 0.0):
        super().__init__(model, ModalityContrastiveLoss(case_weight), optim)

    def _forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "images" in batch:
            return self.model(batch["images"], present=batch["present"], text=batch["text"],
                              text_mask=batch["text_mask"], global_text=batch["global_text"],
                              global_mask=batch["global_mask"])
        return self.model(batch["image"], batch["model_modality"], batch["text"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = self._augmented(batch, batch_idx)
        res = self.loss(**self._forward(batch))
        bs = (batch["images"] if "images" in batch else batch["image"]).shape[0]
        terms = {"contrastive_loss": res["contrastive_loss"],
                 "temperature": 1.0 / self.model.logit_scale.exp().detach()}
        if "case_loss" in res:
            terms["case_loss"] = res["case_loss"]
        for m, v in res["per_modality"].items():
            terms[f"{self.model.cfg.modalities[m]}_loss"] = v
        self._log_terms("train", terms, bs, prog_bar=False)
        self.log("train/loss", res["loss"].detach(), batch_size=bs, prog_bar=True)
        return res["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._forward(batch)
        keep = out.get("pair_mask")
        if keep is None:
            keep = torch.ones(len(out["modality"]), dtype=torch.bool,
                              device=out["modality"].device)
        self._val.append((out["image_features"].float()[keep], out["text_features"].float()[keep],
                          out["modality"][keep]))

    def on_validation_epoch_end(self) -> None:
        gathered = self._gather_val()
        if gathered is None:
            return
        v, t, m = gathered
        res = modality_contrastive_loss(v, t, m, self.model.logit_scale.exp(), gather=False)
        n = max(1, int(sum((m == k).sum() for k in res["per_modality"])))
        # computed on every rank's gathered outputs, so equal on all ranks: their mean (sync_dist)
        # is the value, and Lightning does not warn that an epoch metric is not synced
        self.log("val/contrastive_loss", res["contrastive_loss"], sync_dist=True)
        self.log("val/retrieval_top1", res["v2t_correct"].float() / n, prog_bar=True,
                 sync_dist=True)
        self.log("val/retrieval_r5", _recall_at(v, t, m, 5), prog_bar=True, sync_dist=True)
        for k, acc in per_modality_top1(v, t, m).items():
            self.log(f"val/{self.model.cfg.modalities[k]}_retrieval_top1", acc, sync_dist=True)


class FinetuneModule(TrainModule):
    """Stage 2: ``lambda_c * BCE + lambda_s * KL(f_t, f_fusion)`` with the epoch ramps.

    Batch: ``images`` (B,M,1,D,H,W), ``present`` (B,M), ``label`` (B,), ``text`` (B, text_dim)
    frozen embedding of the case report (or class prompt), used only by the KL term; for
    ``csa_text="report"`` also ``reports_emb`` (B,M,T) / ``report_mask`` (B,M).
    """

    model: MedMAPClassifier

    def __init__(self, model: MedMAPClassifier, optim: OptimConfig,
                 class_weights: torch.Tensor | None = None, freeze_epochs: int = 0):
        self.freeze_epochs = int(freeze_epochs)  # epochs the pre-trained experts stay frozen
        lc = model.cfg.losses
        super().__init__(model, MedMAPLoss(optim.loss_ramp_epochs or optim.epochs,
                                           lc.kl_temperature, cls_loss=lc.cls_loss,
                                           weighting=lc.weighting, cls_weight=lc.cls_weight,
                                           kl_weight=lc.kl_weight,
                                           label_smoothing=lc.label_smoothing,
                                           class_weights=class_weights,
                                           modality_weight=lc.modality_weight), optim)

    def _forward(self, batch: dict[str, Any], text: bool) -> dict[str, Any]:
        return self.model(batch["images"], batch["present"],
                          text=batch["text"] if text else None,
                          reports=batch.get("reports_emb"), report_mask=batch.get("report_mask"),
                          lesion_mask=batch.get("mask"))

    def on_train_epoch_start(self) -> None:
        """Freeze the pre-trained experts (no gradients, batch norm on its pre-trained
        statistics) in the first ``freeze_epochs`` epochs; AdamW skips parameters without a
        gradient, so they start moving at the learning rate of the schedule's epoch
        ``freeze_epochs``. Lightning puts the model back in train mode before every epoch."""
        frozen = self.current_epoch < self.freeze_epochs
        self.model.experts.requires_grad_(not frozen)
        if frozen:
            self.model.experts.eval()
        elif self.model.training:                 # validation may have restored eval mode
            self.model.experts.train()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = self._augmented(batch, batch_idx, drop_modalities=True)
        out = self._forward(batch, text=True)
        terms = self.loss(**out, labels=batch["label"], epoch=self.current_epoch)
        bs = batch["label"].shape[0]
        acc = (out["logits"].argmax(-1) == batch["label"]).float().mean()
        self._log_terms("train", {**{k: v for k, v in terms.items() if k != "loss"}, "acc": acc}, bs)
        self.log("train/loss", terms["loss"].detach(), batch_size=bs, prog_bar=True)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._forward(batch, text=False)
        self._val.append((out["probs"].float(), batch["label"]))

    def on_validation_epoch_end(self) -> None:
        gathered = self._gather_val()
        if gathered is None:
            return
        p, y = gathered
        from medmap.metrics import classification_metrics

        met = classification_metrics(y.cpu().numpy(), p.cpu().numpy())
        # from every rank's gathered predictions: equal on all ranks (see PretrainModule)
        self.log("val/acc", met["accuracy"], prog_bar=True, sync_dist=True)
        self.log("val/auc", float(np.nan_to_num(met["auc"], nan=0.5)), prog_bar=True,
                 sync_dist=True)
        self.log("val/balanced_acc", met["balanced_accuracy"], sync_dist=True)


# ---- stages -----------------------------------------------------------------------------------
def _has_global(cases) -> bool:
    return any(isinstance(c.reports.get(GLOBAL_REPORT), str) and c.reports[GLOBAL_REPORT].strip()
               for c in cases)


class PretrainStage(Stage):
    """Modality-aware contrastive pre-training of the experts (see the module doc)."""

    name, section, monitor = "pretrain", "pretrain", "val/retrieval_r5"

    def data(self, cfg: ExperimentConfig) -> StageData:
        self.cases = False
        if cfg.model.losses.case_alignment and cfg.model.losses.case_weight > 0:
            from medmap.data.datasets import CaseDataset

            manifest, mods = load_cases(cfg.data)
            loader = build_loader(cfg.data)
            ds = {s: CaseDataset(manifest, loader, modalities=mods, split=s)
                  for s in ("train", "val")}
            if _has_global(ds["train"].cases):
                self.cases = True
                return StageData(mods, ds["train"], ds["val"], manifest)
            warnings.warn(f"{cfg.data.manifest}: no training case has a '{GLOBAL_REPORT}' "
                          "report; pre-training without the case-level term", stacklevel=3)
        return pair_datasets(cfg.data)

    def texts(self, cfg: ExperimentConfig, data: StageData, encoder) -> TextTable:
        if not self.cases:
            return TextTable(encoder, [p[3] for d in (data.train, data.val) for p in d.pairs])
        texts = [r for d in (data.train, data.val) for c in d.cases
                 for k, r in c.reports.items()
                 if (k in data.modalities or k == GLOBAL_REPORT) and isinstance(r, str) and r.strip()]
        return TextTable(encoder, texts)

    def model(self, cfg: ExperimentConfig, data: StageData, encoder, texts) -> ModalityAwareCLIP:
        self.mcfg = complete_model_config(cfg, data.modalities, encoder.hidden_size)
        return ModalityAwareCLIP(self.mcfg)

    def module(self, cfg: ExperimentConfig, model: ModalityAwareCLIP) -> PretrainModule:
        w = cfg.model.losses.case_weight if self.cases else 0.0
        return PretrainModule(model, cfg.pretrain, case_weight=w)

    def datamodule(self, cfg: ExperimentConfig, data: StageData, texts) -> StageDataModule:
        mods, o = data.modalities, cfg.pretrain
        if self.cases:
            return StageDataModule(data.train, data.val, CasePairCollator(texts, mods),
                                   o.batch_size, o.num_workers, o.seed)
        # one modality per batch: full in-modality negatives (the loss is per modality anyway)
        groups = [mods.index(p[1]) for p in data.train.pairs]
        return StageDataModule(data.train, data.val, PairCollator(texts, mods), o.batch_size,
                               o.num_workers, o.seed, train_groups=groups)

    def save_meta(self) -> dict[str, Any]:
        return {"case_alignment": self.cases}


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
        masks = {}
        if MedMAPClassifier.reads_mask(cfg.model):
            key = cfg.model.mask_key
            missing = [c.case_id for c in manifest.select(split="train") if key not in c.masks]
            missing += [c.case_id for c in manifest.select(split="val") if key not in c.masks]
            if missing:
                raise ManifestError([f"case {cid!r}: masks.{key}: missing; the model reads this "
                                     f"mask (model.pooling 'mask' / model.mask_channel), so "
                                     f"every train / val case needs it"
                                     for cid in missing], cfg.data.manifest)
            masks = {"with_masks": True, "mask_key": key}
        ds = {s: CaseDataset(manifest, loader, modalities=mods, split=s, **masks)
              for s in ("train", "val")}
        if len(ds["train"]) == 0:
            raise ManifestError([f"no train cases in {cfg.data.manifest}"])
        return StageData(mods, ds["train"], ds["val"], manifest)

    def texts(self, cfg: ExperimentConfig, data: StageData, encoder) -> TextTable:
        from medmap.text.knowledge import load_class_knowledge

        mods, seed = data.modalities, cfg.finetune.seed
        self._train_cases = list(data.train.cases)
        self.mcfg = m = complete_model_config(cfg, mods, encoder.hidden_size)
        knowledge = load_class_knowledge(cfg.text.knowledge, m.organ)
        self.class_prompts = knowledge.embed_appearance(encoder, mods)              # (M, C, T)
        self.modality_prompts = encoder.encode([m.prompts[x] for x in mods]).float()  # (M, T)
        collate = CaseCollator(None, m.organ, m.classes, mods)
        texts = [collate.texts({"reports": [c.reports], "label": torch.tensor([c.label_index])})[0]
                 for c in data.train.cases]  # train cases are all labelled (checked above)
        if m.csa_text == "report":
            warnings.warn("csa_text 'report': the case's own reports guide the classifier at "
                          "inference too; wherever a report states the diagnosis this leaks the "
                          "label into the prediction", stacklevel=3)
            texts += [r for d in (data.train, data.val) for c in d.cases
                      for k, r in c.reports.items()
                      if k in mods and isinstance(r, str) and r.strip()]
        table = TextTable(encoder, texts)
        if m.language == "random":           # language removed: same norms, no semantics
            self.class_prompts = random_like(self.class_prompts, 1_000 + seed)
            self.modality_prompts = random_like(self.modality_prompts, 2_000 + seed)
            table = table.randomized(3_000 + seed)
        return table

    def model(self, cfg: ExperimentConfig, data: StageData, encoder, texts) -> MedMAPClassifier:
        model = MedMAPClassifier(self.mcfg, self.class_prompts, self.modality_prompts)
        if self.init:
            load_pretrained_experts(model, str(self.init))
        self.stats_prior = None
        if self.mcfg.stats_head and self.mcfg.stats_head_init == "fit":
            from medmap.train.stats_prior import fit_stats_prior

            m = self.mcfg
            collate = CaseCollator(None, m.organ, m.classes, data.modalities,
                                   with_case_text=False)
            self.stats_prior = fit_stats_prior(model, data.train, collate, cfg.finetune.seed)
        return model

    def module(self, cfg: ExperimentConfig, model: MedMAPClassifier) -> FinetuneModule:
        weights = None
        if model.cfg.losses.class_balance:   # 1 / class frequency, mean 1 over the classes seen
            counts = np.bincount([c.label_index for c in self._train_cases],
                                 minlength=len(model.cfg.classes)).astype(np.float64)
            w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0)
            weights = torch.tensor(w, dtype=torch.float32)
        return FinetuneModule(model, cfg.finetune, weights,
                              freeze_epochs=cfg.finetune.freeze_pretrained_epochs if self.init
                              else 0)

    def datamodule(self, cfg: ExperimentConfig, data: StageData, texts) -> StageDataModule:
        m, mods, o = self.mcfg, data.modalities, cfg.finetune
        reports = m.csa_text == "report"
        return StageDataModule(data.train, data.val,
                               CaseCollator(texts, m.organ, m.classes, mods, reports),
                               o.batch_size, o.num_workers, o.seed,
                               val_collate=CaseCollator(texts if reports else None, m.organ,
                                                        m.classes, mods, reports,
                                                        with_case_text=False))

    def save_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"init": str(self.init) if self.init else None}
        if getattr(self, "stats_prior", None) is not None:
            meta["stats_prior"] = self.stats_prior
        return meta


def pretrain(cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False,
             callbacks: list | None = None, overwrite: bool = False) -> Path:
    """Stage 1: modality-aware contrastive pre-training; returns the saved model folder."""
    return run_stage(cfg, run_dir, PretrainStage(), resume, callbacks, overwrite)


def finetune(cfg: ExperimentConfig, run_dir: str | Path, init: str | Path | None = None,
             resume: bool = False, callbacks: list | None = None,
             overwrite: bool = False) -> Path:
    """Stage 2: fine-tune the MedMAP classifier; ``init`` = a pre-trained model folder (the
    +MAVLP setting) or None (random experts). Returns the saved model folder."""
    return run_stage(cfg, run_dir, FinetuneStage(init), resume, callbacks, overwrite)


__all__ = ["PretrainStage", "FinetuneStage", "PretrainModule", "FinetuneModule", "pretrain",
           "finetune", "complete_model_config"]
