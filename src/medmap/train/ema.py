"""An exponential moving average of the weights that ``strategy: ddp_spawn`` can pickle.

Lightning's ``EMAWeightAveraging`` keeps torch's ``get_ema_avg_fn(decay)``, a local function,
so a trainer holding it cannot be pickled into spawned processes ("Can't pickle local object
'get_ema_avg_fn.<locals>.ema_update'"). :class:`EMAWeights` is the same callback with the same
update as a module-level callable.

Example:
    >>> import pickle
    >>> cb = EMAWeights(decay=0.99, update_starting_at_epoch=1)
    >>> type(pickle.loads(pickle.dumps(cb))).__name__
    'EMAWeights'
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMAUpdate:
    """torch's ``get_ema_avg_fn(decay)`` update, ``decay * ema + (1 - decay) * current``."""

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)

    @torch.no_grad()
    def __call__(self, ema_param: torch.Tensor, current_param: torch.Tensor,
                 num_averaged: Any) -> torch.Tensor:
        return self.decay * ema_param + (1 - self.decay) * current_param


class EMAWeights(EMAWeightAveraging):
    """``EMAWeightAveraging`` whose average update pickles (:class:`EMAUpdate`)."""

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        self._kwargs["avg_fn"] = EMAUpdate(decay)

    @property
    def state_key(self) -> str:
        """Lightning's own key, so checkpoints written with ``EMAWeightAveraging`` resume."""
        return "EMAWeightAveraging"


__all__ = ["EMAUpdate", "EMAWeights"]
