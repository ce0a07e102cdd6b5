"""One printed line per training epoch (``OptimConfig.progress: epochs``), instead of
Lightning's progress bar: readable in a log file and when several runs share one terminal."""

from __future__ import annotations

import sys

import lightning as L


class EpochLines(L.Callback):
    """Prints ``liver/finetune epoch 3/10: train/loss 0.412, val/acc 0.846, val/auc 0.981``
    (the training loss and the validation metrics, less the per-sequence breakdowns of a
    metric also logged whole, such as ``val/T2WI_retrieval_top1``) when an epoch ends.

    Example:
        >>> cb = EpochLines("liver/finetune", epochs=10)    # build_trainer adds it
    """

    def __init__(self, name: str, epochs: int):
        self.name, self.epochs = name, epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        val = sorted(k for k in m if k.startswith("val/"))
        whole = {k[4:] for k in val}
        val = [k for k in val if not any(k.endswith("_" + w) for w in whole)]
        keys = [k for k in ("train/loss",) if k in m] + val
        shown = ", ".join(f"{k} {float(m[k]):.3f}" for k in keys)
        line = f"  {self.name} epoch {trainer.current_epoch + 1}/{self.epochs}" + (
            f": {shown}" if shown else "")
        sys.stdout.write(line + "\n")         # one write: runs side by side share a terminal
        sys.stdout.flush()
