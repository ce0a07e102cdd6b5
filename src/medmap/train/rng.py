"""Exact resume of the random streams: the RNG states of torch, NumPy, Python and CUDA stored
in every checkpoint (only tensors and plain types, loadable with ``weights_only=True``) and
restored at the first epoch of a resumed run. A module-level class, so that ``ddp_spawn`` can
pickle it into each process.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class RNGStateCallback(L.Callback):
    """Saves the RNG states with each checkpoint; restores them when a resumed run starts its
    first epoch."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict["rng"]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pending = getattr(self, "_pending", None)
        if pending is not None:
            _set_rng_state(pending)
            self._pending = None


__all__ = ["RNGStateCallback"]
