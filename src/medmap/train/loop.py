"""A plain torch training loop for the downstream fine-tuning tasks (segmentation, report
generation, probes): the engine's AdamW and sampler without Lightning.

Example:
    >>> losses = fit(lambda b: model(b).mean(), ds, collate, [(model, 1.0)], OptimConfig())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medmap.config import UserError
from medmap.train.engine import EpochShuffleSampler, build_adamw

__all__ = ["fit", "ListDataset"]


def fit(step, dataset, collate, groups: Sequence[tuple[nn.Module, float]], cfg,
        train_modules: Sequence[nn.Module] = ()) -> list[float]:
    """Plain torch training loop: ``cfg`` is an :class:`~medmap.train.engine.OptimConfig`
    (epochs, batch_size, lr, weight_decay, warmup_epochs, min_lr_ratio, gradient_clip, seed).
    Batches follow the engine's :class:`~medmap.train.engine.EpochShuffleSampler` (order depends
    only on seed + epoch); ``step(batch) -> loss``. Returns the mean loss of every epoch."""
    from torch.utils.data import DataLoader

    if len(dataset) == 0:
        raise UserError("no training samples")
    sampler = EpochShuffleSampler(len(dataset), cfg.seed, shuffle=True)
    dl = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                    num_workers=cfg.num_workers)
    per_epoch = len(dl)
    opt, sched = build_adamw([(m.named_parameters(), mult) for m, mult in groups], cfg,
                             per_epoch * cfg.epochs, per_epoch)
    params = [p for g in opt.param_groups for p in g["params"]]
    for m in train_modules:
        m.train()
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            tot, n = 0.0, 0
            for batch in dl:
                loss = step(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.gradient_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.gradient_clip)
                opt.step()
                sched.step()
                tot, n = tot + float(loss.detach()), n + 1
            losses.append(tot / max(1, n))
    for m in train_modules:
        m.eval()
    return losses


class ListDataset(torch.utils.data.Dataset):
    """A dataset over a list, ``fn(item)`` applied lazily in ``__getitem__``."""

    def __init__(self, items: Sequence[Any], fn=None):
        self.items, self.fn = list(items), fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.fn(self.items[i]) if self.fn is not None else self.items[i]
