"""Lightning modules of the MedMAP stages. Model outputs are dicts whose keys are the loss's
arguments, so the loop never branches on which loss it runs; every ``*_loss`` term is logged."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from medmap.losses.contrastive import modality_contrastive_loss
from medmap.losses.medmap import medmap_loss
from medmap.models.medmap import MedMAPClassifier, ModalityAwareCLIP
from medmap.train.engine import OptimConfig, configure_adamw


def per_modality_top1(v: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> dict[int, torch.Tensor]:
    """Volume -> report top-1 accuracy within each modality: v, t (N, d) normalised features,
    m (N,) modality index -> {modality index: accuracy}."""
    out = {}
    for k in torch.unique(m).tolist():
        sel = m == k
        vk, tk = v[sel], t[sel]
        out[k] = ((vk @ tk.t()).argmax(1) == torch.arange(len(vk), device=vk.device)).float().mean()
    return out


class _Base(L.LightningModule):
    def __init__(self, model: torch.nn.Module, optim: OptimConfig):
        super().__init__()
        self.model = model
        self.optim = optim
        # training-batch augmentation (medmap.data.augment.BatchAugmenter), set by the runner.
        # Its draws come from a generator seeded by (seed, epoch, batch, rank), not from the
        # global RNG, so a resumed run replays exactly the same augmentation.
        self.augment = None

    def _augmented(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if self.augment is None:
            return batch
        g = torch.Generator().manual_seed(
            (int(self.optim.seed) * 1_000_003 + int(self.current_epoch) * 100_003
             + int(batch_idx) * 101 + int(self.global_rank)) % (2**63 - 1))
        batch = dict(batch)
        if "images" in batch:                           # cases (B, M, 1, D, H, W)
            batch["images"] = self.augment.cases(batch["images"], batch["present"], g)
        elif "image" in batch:                          # pairs (B, 1, D, H, W)
            batch["image"] = self.augment.volumes(batch["image"], g)
        return batch

    def configure_optimizers(self) -> dict[str, Any]:
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        return configure_adamw(self.model, self.optim, total, per_epoch)

    def _gather_val(self) -> tuple[torch.Tensor, ...] | None:
        """Concatenate the epoch's stored validation tuples (all ranks under DDP) and reset."""
        if not self._val:
            return None
        out = tuple(torch.cat(x) for x in zip(*self._val))
        self._val.clear()
        if self.trainer.world_size > 1:
            out = tuple(self.all_gather(x).flatten(0, 1) for x in out)
        return out

    def _log_terms(self, prefix: str, terms: dict[str, torch.Tensor], bs: int, **kw) -> None:
        for k, v in terms.items():
            if isinstance(v, torch.Tensor) and v.ndim == 0:
                self.log(f"{prefix}/{k}", v.detach().float(), batch_size=bs, sync_dist=True, **kw)


class PretrainModule(_Base):
    """Stage 1: per-modality symmetric InfoNCE between experts and the projected report text.

    Batch: ``image`` (B,1,D,H,W), ``model_modality`` (B,) index into the model's modalities,
    ``text`` (B, text_dim) frozen report embeddings.
    """

    model: ModalityAwareCLIP

    def __init__(self, model: ModalityAwareCLIP, optim: OptimConfig):
        super().__init__(model, optim)
        self._val: list[tuple[torch.Tensor, ...]] = []

    def _step(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.model(batch["image"], batch["model_modality"], batch["text"])
        return modality_contrastive_loss(out["image_features"], out["text_features"],
                                         out["modality"], out["logit_scale"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = self._augmented(batch, batch_idx)
        res = self._step(batch)
        bs = batch["image"].shape[0]
        terms = {"contrastive_loss": res["contrastive_loss"],
                 "temperature": 1.0 / self.model.logit_scale.exp().detach()}
        for m, v in res["per_modality"].items():
            terms[f"{self.model.cfg.modalities[m]}_loss"] = v
        self._log_terms("train", terms, bs, prog_bar=False)
        self.log("train/loss", res["contrastive_loss"].detach(), batch_size=bs, prog_bar=True)
        return res["contrastive_loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.model(batch["image"], batch["model_modality"], batch["text"])
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


class FinetuneModule(_Base):
    """Stage 2: ``lambda_c * BCE + lambda_s * KL(f_t, f_fusion)`` with the epoch ramps.

    Batch: ``images`` (B,M,1,D,H,W), ``present`` (B,M), ``label`` (B,), ``text`` (B, text_dim)
    frozen embedding of the case report (or class prompt), used only by the KL term.
    """

    model: MedMAPClassifier

    def __init__(self, model: MedMAPClassifier, optim: OptimConfig):
        super().__init__(model, optim)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = self._augmented(batch, batch_idx)
        out = self.model(batch["images"], batch["present"])
        f_t = self.model.text_features(batch["text"])
        t_max = self.optim.loss_ramp_epochs or self.optim.epochs
        terms = medmap_loss(out["logits"], batch["label"], out["fusion"], f_t,
                            epoch=self.current_epoch, max_epochs=t_max)
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
        from medmap.eval.metrics import classification_metrics

        met = classification_metrics(y.cpu().numpy(), p.cpu().numpy())
        self.log("val/acc", met["accuracy"], prog_bar=True)
        self.log("val/auc", float(np.nan_to_num(met["auc"], nan=0.5)), prog_bar=True)
        self.log("val/balanced_acc", met["balanced_accuracy"])
