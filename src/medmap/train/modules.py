"""The Lightning module base every training stage builds on.

The contract is open_clip's: a model's ``forward`` returns a dict whose keys are its loss's
argument names, the module calls ``loss(**out)``, and every scalar ``*_loss`` term the loss
returns is logged. Subclasses (one per recipe stage: :mod:`medmap.train.medmap`,
:mod:`medmap.train.mg3d`) only say how a batch becomes model inputs.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from medmap.config import UserError
from medmap.train.engine import OptimConfig, build_adamw, quiet_third_party


class TrainingDivergedError(UserError):
    """A training step produced a non-finite gradient (the message names the epoch, the step
    and the fix)."""


def per_modality_top1(v: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> dict[int, torch.Tensor]:
    """Volume -> report top-1 accuracy within each modality: v, t (N, d) normalised features,
    m (N,) modality index -> {modality index: accuracy}."""
    out = {}
    for k in torch.unique(m).tolist():
        sel = m == k
        vk, tk = v[sel], t[sel]
        out[k] = ((vk @ tk.t()).argmax(1) == torch.arange(len(vk), device=vk.device)).float().mean()
    return out


class TrainModule(L.LightningModule):
    """``model`` + ``loss`` + optimisation settings; AdamW with warm-up cosine per step.

    ``lr_scales``: ``(parameter-name prefix, scale)`` pairs; parameters under a prefix train at
    ``optim.lr * scale`` (e.g. MG-3D's slower vision encoder), the rest at ``optim.lr``;
    ``optim.lr_scales`` (a config mapping, e.g. ``{"experts.": 0.1}``) adds more.
    """

    def __init__(self, model: torch.nn.Module, loss: torch.nn.Module | None, optim: OptimConfig,
                 lr_scales: tuple[tuple[str, float], ...] = ()):
        super().__init__()
        self.model = model
        self.loss = loss
        self.optim = optim
        self.lr_scales = tuple(lr_scales)
        self._val: list[tuple[torch.Tensor, ...]] = []
        # training-batch augmentation (medmap.data.augment.BatchAugmenter), set by the stage.
        # Its draws come from a generator seeded by (seed, epoch, batch, rank), not from the
        # global RNG, so a resumed run replays exactly the same augmentation.
        self.augment = None

    def setup(self, stage: str) -> None:
        """Warning filters are per process: apply medmap's to the processes ``ddp_spawn``
        starts as well (:func:`~medmap.train.engine.quiet_third_party`)."""
        quiet_third_party()

    def _augmented(self, batch: dict[str, Any], batch_idx: int,
                   drop_modalities: bool = False) -> dict[str, Any]:
        """The training batch augmented; ``drop_modalities``: also hide sequences
        (``augment.modality_drop``; fine-tuning only, pre-training aligns every pair)."""
        if self.augment is None:
            return batch
        g = torch.Generator().manual_seed(
            (int(self.optim.seed) * 1_000_003 + int(self.current_epoch) * 100_003
             + int(batch_idx) * 101 + int(self.global_rank)) % (2**63 - 1))
        batch = dict(batch)
        if drop_modalities and "present" in batch and self.augment.cfg.modality_drop > 0:
            batch["present"] = self.augment.drop_modalities(batch["present"], g).to(
                batch["present"].device)
        if "images" in batch and batch.get("mask") is not None:   # cases with their mask
            batch["images"], batch["mask"] = self.augment.cases_with_mask(
                batch["images"], batch["present"], batch["mask"], g)
        elif "images" in batch:                         # cases (B, M, 1, D, H, W)
            batch["images"] = self.augment.cases(batch["images"], batch["present"], g)
        elif "image" in batch:                          # pairs (B, 1, D, H, W)
            batch["image"] = self.augment.volumes(batch["image"], g)
        return batch

    def param_groups(self) -> list[tuple[list[tuple[str, torch.nn.Parameter]], float]]:
        """``(named parameters, lr scale)`` groups of the model for :func:`build_adamw`."""
        groups: list[tuple[list[tuple[str, torch.nn.Parameter]], float]] = []
        rest = list(self.model.named_parameters())
        scales = list(self.lr_scales) + list((self.optim.lr_scales or {}).items())
        for prefix, scale in scales:
            groups.append(([(n, p) for n, p in rest if n.startswith(prefix)], scale))
            rest = [(n, p) for n, p in rest if not n.startswith(prefix)]
        return [(rest, 1.0)] + groups

    def configure_optimizers(self) -> dict[str, Any]:
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        # fp16 with a loss scaler: Lightning unscales the gradients before clipping them, which
        # a fused optimizer would do inside its step; fp32 and bf16 (no scaler) take the fused one
        opt, sched = build_adamw(self.param_groups(), self.optim, total, per_epoch,
                                 allow_fused=not self._loss_scaled())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip to ``optim.gradient_clip`` by the global norm of every gradient, computed with
        torch's multi-tensor kernels: Lightning's default loops over MedMAP's ~900 tensors one
        at a time on a CPU and refuses a fused optimizer under bf16 mixed precision, which has
        no loss scaler and so nothing to unscale. Same norm, same clipping rule.

        Without a loss scaler, a non-finite gradient norm stops the run with
        :class:`TrainingDivergedError` before the optimiser writes NaN into the weights (fp16's
        scaler skips such steps itself, so it is left to it)."""
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if not self._loss_scaled():
            bad = not bool(torch.isfinite(norm))
            if self.trainer.world_size > 1:      # sharded gradients (FSDP): any rank's verdict
                bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
            if bad:
                raise TrainingDivergedError(
                    f"training stopped at epoch {self.current_epoch}, step {self.global_step}: "
                    f"the gradient norm is {float(norm)} under precision "
                    f"{self.trainer.precision}, and the next step would write NaN into the "
                    "weights; checkpoints/last.ckpt keeps the last finished epoch, if one "
                    "finished. Fix: rerun the stage with <stage>.precision=32-true (if it ran "
                    "in bf16) or a lower <stage>.lr")
        if not gradient_clip_val:
            return
        if (gradient_clip_algorithm or "norm") != "norm":     # a str enum in Lightning
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)
            return
        torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm, foreach=True)

    def _loss_scaled(self) -> bool:
        """fp16 mixed precision, whose loss scaler unscales and skips non-finite steps."""
        return str(self.trainer.precision) in ("16-mixed", "16")

    def _gather_val(self) -> tuple[torch.Tensor, ...] | None:
        """Concatenate the epoch's stored validation tuples (all ranks under DDP) and reset."""
        if not self._val:
            return None
        out = tuple(torch.cat(x) for x in zip(*self._val))
        self._val.clear()
        if self.trainer.world_size > 1:      # (Lightning's all_gather calls a deprecated one)
            from medmap.losses.contrastive import gather_with_grad

            with torch.no_grad():
                out = tuple(gather_with_grad(x) for x in out)
        return out

    def _log_terms(self, prefix: str, terms: dict[str, torch.Tensor], bs: int, **kw) -> None:
        """Log every scalar term as ``prefix/name``; training terms as epoch means (the
        learning curves of ``logs/metrics.csv``: one row per epoch beside the validation
        metrics)."""
        if prefix == "train":
            kw.setdefault("on_step", False)
            kw.setdefault("on_epoch", True)
        for k, v in terms.items():
            if isinstance(v, torch.Tensor) and v.ndim == 0:
                self.log(f"{prefix}/{k}", v.detach().float(), batch_size=bs, sync_dist=True, **kw)

    def _log_retrieval(self, v: torch.Tensor, t: torch.Tensor, m: torch.Tensor,
                       modalities: list[str]) -> None:
        """``val/<modality>_retrieval_top1`` and their mean ``val/retrieval_top1``."""
        accs = per_modality_top1(v, t, m)
        for k, acc in accs.items():              # from gathered outputs: equal on all ranks
            self.log(f"val/{modalities[k]}_retrieval_top1", acc, sync_dist=True)
        self.log("val/retrieval_top1", torch.stack(list(accs.values())).mean(), prog_bar=True,
                 sync_dist=True)
