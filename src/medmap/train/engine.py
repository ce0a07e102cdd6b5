"""The one Lightning training engine used by every stage.

AdamW with linear warm-up + cosine decay (per optimiser step), gradient accumulation, bf16 mixed
precision on a GPU, DDP on several devices / nodes, progress bars, CSV + TensorBoard logs,
a checkpoint every epoch plus ``last.ckpt``, and exact resume: weights, optimiser, scheduler,
epoch, the epoch-seeded sampler order and the RNG states (restored by :class:`RNGStateCallback`).

Launching on several GPUs / nodes (Lightning reads the usual environment)::

    torchrun --nproc_per_node 4 -m medmap.cli finetune --config c.yaml optim.devices=4
    srun python -m medmap.cli finetune --config c.yaml optim.devices=4 optim.num_nodes=2  # SLURM
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Sampler

from medmap.train.precision import (  # noqa: F401 (re-exported)
    bf16_fp32_map_edge, native_bf16_cpu, resolve_precision)


@dataclass
class OptimConfig:
    """Optimisation and hardware settings of one training stage."""

    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    accumulate_grad_batches: int = 1
    gradient_clip: float = 1.0
    # auto: bf16-mixed on a CPU with native bf16 (AMX / AVX512-BF16; 1.23x per step) whose
    # convolution gradients agree with fp32, 32-true on a GPU (bf16-mixed measured 0.89-1.01x
    # on an H100) and elsewhere (medmap.train.precision.resolve_precision)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Any = 1                 # int, "auto" or a list of ids
    num_nodes: int = 1
    # auto: DDP (unused-parameter detection) when more than one process
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true", "ddp_spawn", "fsdp",
                      "deepspeed", "single_device"] = "auto"
    # DataLoader workers; "auto" (the default): auto_num_workers(devices), resolved here
    num_workers: int | Literal["auto"] = "auto"
    seed: int = 0
    loss_ramp_epochs: int = 0        # t_max of MedMAP's lambda ramps; 0 = epochs (the paper)
    # learning-rate multipliers by parameter-name prefix, e.g. {"experts.": 0.1}: pre-trained
    # experts slower than the new modules (the first matching prefix wins)
    lr_scales: dict[str, float] = field(default_factory=dict)
    # stop when the stage's validation metric has not improved for this many epochs and save
    # the best epoch's weights (0: run every epoch, save the last)
    early_stop_patience: int = 0
    # also keep a checkpoint of every epoch (checkpoints/epochNNN.ckpt); off: only last.ckpt
    # (resume) and best.ckpt (early stopping), two files written per epoch instead of three
    keep_epoch_checkpoints: bool = False
    # exponential moving average of the weights (Lightning's EMAWeightAveraging), used for
    # validation and saved at the end; 0: off. Starts after the warm-up epochs.
    ema_decay: float = 0.0
    # fine-tuning from pre-trained experts: the experts (encoders and token projections) stay
    # frozen, batch norm included, for this many epochs while the new modules learn on their
    # features, then everything trains (linear probing then fine-tuning, "LP-FT"); 0: off
    freeze_pretrained_epochs: int = 0
    # true: Lightning's progress bar; "epochs": one printed line per epoch instead (for logs and
    # for runs that share a terminal, such as the demo's organs trained side by side)
    progress: bool | Literal["epochs"] = True
    log_every_n_steps: int = 10

    def __post_init__(self) -> None:
        if int(self.freeze_pretrained_epochs) < 0:
            raise ValueError(f"freeze_pretrained_epochs must be >= 0 (0: off), got "
                             f"{self.freeze_pretrained_epochs}")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.num_workers == "auto":
            self.num_workers = auto_num_workers(self.devices)
        elif not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0 or 'auto', got "
                             f"{self.num_workers!r}")


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_num_workers(devices: Any = 1, cpus: int | None = None) -> int:
    """DataLoader workers per training process for ``num_workers: auto``.

    The cores are shared by the node's training processes (``devices``: one per device); each
    process keeps 2 of its share for the model's compute threads and the loop, the rest go to
    workers, at most 8: 2 cores -> 0 (a worker would only take time from the step), 4 -> 2,
    8 -> 6, 16 or more -> 8. The count never changes results: items are read from the
    deterministic volume cache and augmentation runs in the training process, so a run resumed
    with another count sees the same batches.

    Example:
        >>> auto_num_workers(1, cpus=2), auto_num_workers(1, cpus=8), auto_num_workers(4, cpus=64)
        (0, 6, 8)
    """
    if isinstance(devices, int) and devices > 0:
        procs = devices
    elif isinstance(devices, (list, tuple)) and devices:
        procs = len(devices)
    elif devices in ("auto", -1, "-1"):          # Lightning: every visible GPU
        procs = max(1, torch.cuda.device_count())
    else:
        procs = 1
    per_process = (available_cpus() if cpus is None else cpus) // procs
    return max(0, min(8, per_process - 2))


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, cosine to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _no_decay(name: str, p: torch.nn.Parameter) -> bool:
    return p.ndim < 2 or "embed" in name or "logit_scale" in name


def build_adamw(groups: Sequence[tuple[Iterable[tuple[str, torch.nn.Parameter]], float]],
                cfg: OptimConfig, total_steps: int, steps_per_epoch: int,
                allow_fused: bool = True,
                ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The one AdamW of every training loop, with the warm-up + cosine schedule (per step).

    ``groups``: ``(named_parameters, lr_scale)`` pairs; each becomes a decayed and an undecayed
    parameter group (no weight decay on biases, norms, embeddings and the temperature) with
    learning rate ``cfg.lr * lr_scale``. A parameter listed twice is used once (first group),
    frozen ones are skipped. ``allow_fused=False`` keeps the per-tensor kernel (Lightning's
    mixed-precision plugins clip gradients themselves and refuse a fused optimizer).

    Example:
        >>> net = torch.nn.Linear(4, 2)
        >>> opt, sched = build_adamw([(net.named_parameters(), 1.0)], OptimConfig(), 10, 5)
        >>> [len(g["params"]) for g in opt.param_groups]
        [1, 1]
    """
    param_groups, seen, params = [], set(), []
    for named, scale in groups:
        decay, no_decay = [], []
        for n, p in named:
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if _no_decay(n, p) else decay).append(p)
        lr = cfg.lr * scale
        param_groups += [g for g in ({"params": decay, "weight_decay": cfg.weight_decay, "lr": lr},
                                     {"params": no_decay, "weight_decay": 0.0, "lr": lr})
                         if g["params"]]
        params += decay + no_decay
    # fused: one kernel over all tensors instead of ~10 ops per parameter tensor (MedMAP has
    # ~900 small tensors; the per-tensor loop cost 2-5% of a CPU step)
    fused = allow_fused and bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    opt = torch.optim.AdamW(param_groups, lr=cfg.lr, fused=fused or None)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total_steps, warm, cfg.min_lr_ratio))
    return opt, sched


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with ``seed + epoch`` and shards across ranks: the order depends only on the
    epoch, so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per = len(self)
        order = order + order[: per * self.world - self.n]   # pad so every rank has `per`
        return iter(order[self.rank::self.world])


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches drawn within one group (here: one MRI modality), groups interleaved.

    Pre-training batches thus hold ``batch_size`` pairs of the same modality, so every
    contrastive step has full in-modality negatives. The order depends only on ``seed + epoch``
    (Lightning calls ``self.sampler.set_epoch``), and batches are sharded across ranks.
    """

    def __init__(self, groups: list[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.groups, self.batch_size = list(groups), batch_size
        self.rank, self.world = rank, world_size
        self.sampler = EpochShuffleSampler(len(self.groups), seed)  # holds seed and epoch

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch)
        batches: list[list[int]] = []
        for key in sorted(set(self.groups)):
            idx = [i for i, k in enumerate(self.groups) if k == key]
            perm = torch.randperm(len(idx), generator=g).tolist()
            idx = [idx[j] for j in perm]
            batches += [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        order = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[j] for j in order]
        per = math.ceil(len(batches) / self.world)
        batches = batches + batches[: per * self.world - len(batches)]
        return batches[self.rank::self.world]

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        # A generator, so the order is drawn at the first ``next`` and not when the DataLoader
        # iterator is created: Lightning creates it before calling ``set_epoch`` on a resumed
        # run, which would otherwise replay epoch 0's order.
        yield from self._batches()


def make_rng_callback():
    """A Lightning callback that stores the RNG states in every checkpoint and restores them on
    resume (:class:`medmap.train.rng.RNGStateCallback`; imported here lazily, so that the
    engine's settings load without Lightning)."""
    from medmap.train.rng import RNGStateCallback

    return RNGStateCallback()


class _ThirdPartyNoise(logging.Filter):
    """Drops Lightning's advertising tip, its "Loading `train_dataloader`" chatter and the
    "GPU / TPU available" inventory;
    everything else (and every warning of medmap's own) still reaches the user."""

    NOISE = ("💡 Tip", "Loading `train_dataloader` to estimate", "GPU available:", "TPU available:",
             "HPU available:")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.NOISE)


def quiet_third_party() -> None:
    """Silence the third-party lines a training run would print that are not about the run:
    Lightning's tip, the ``LeafSpec`` deprecation its pytree helper triggers in PyTorch and its
    hint about epochs shorter than the logging interval (idempotent)."""
    for name in ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _ThirdPartyNoise) for f in lg.filters):
            lg.addFilter(_ThirdPartyNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # a short epoch logs at its end anyway (medmap's metrics are per epoch): not a user problem
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller "
                                              r"than the logging interval")


def direct_checkpoint_io():
    """Lightning's ``TorchCheckpointIO`` with a faster local save
    (:class:`medmap.train.checkpoint_io.DirectCheckpointIO`): ``torch.save`` straight into a
    temporary file beside the target, renamed over it (atomic).

    Example:
        >>> io = direct_checkpoint_io()
        >>> io.save_checkpoint({"epoch": 1}, "/tmp/medmap-doc/last.ckpt")  # doctest: +SKIP
    """
    from medmap.train.checkpoint_io import DirectCheckpointIO

    return DirectCheckpointIO()


def small_map_guard(precision: str, accelerator: str = "auto") -> list:
    """``[SmallMapFP32(edge)]`` for bf16-mixed training on a CPU whose bf16 convolution
    gradients are wrong on maps up to ``edge``^3 voxels and right above
    (:func:`medmap.train.precision.bf16_fp32_map_edge`), with a warning; ``[]`` elsewhere."""
    if precision != "bf16-mixed" or not native_bf16_cpu() or (
            torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")):
        return []
    edge = bf16_fp32_map_edge()
    if edge is None:
        warnings.warn("precision bf16-mixed (forced): this CPU's bf16 convolution gradients are "
                      "wrong on every probed feature-map size; training may diverge (it stops "
                      "at the first non-finite gradient); precision: auto trains in 32-true",
                      RuntimeWarning, stacklevel=3)
    if not edge:
        return []
    from medmap.train.bf16_guard import SmallMapFP32

    warnings.warn(f"precision bf16-mixed: this CPU's bf16 convolution gradients are wrong on "
                  f"feature maps of up to {edge}^3 voxels (torch {torch.__version__}); "
                  "convolutions on those maps run in fp32, the rest in bf16", RuntimeWarning,
                  stacklevel=3)
    return [SmallMapFP32(edge)]


def build_trainer(run_dir: str | Path, cfg: OptimConfig, monitor: str | None = None,
                  mode: str = "max", extra_callbacks: list | None = None):
    """A Lightning ``Trainer`` writing logs and checkpoints under ``run_dir``:
    ``checkpoints/last.ckpt`` every epoch (exact resume), ``best.ckpt`` by ``monitor`` when
    early stopping is on, and ``epochNNN.ckpt`` of every epoch with
    ``cfg.keep_epoch_checkpoints``."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    quiet_third_party()
    run_dir = Path(run_dir)
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    n_proc = (cfg.devices if isinstance(cfg.devices, int) else 2) * cfg.num_nodes
    strategy = cfg.strategy
    if strategy == "auto" and n_proc > 1:
        strategy = "ddp_find_unused_parameters_true"
    if cfg.keep_epoch_checkpoints:
        ckpt_every = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="epoch{epoch:03d}",
                                     auto_insert_metric_name=False, save_top_k=-1,
                                     save_last=True, every_n_epochs=1)
    else:   # one file, overwritten each epoch (Lightning's save_last alone only saves at the end)
        ckpt_every = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last",
                                     auto_insert_metric_name=False, save_top_k=1,
                                     enable_version_counter=False, every_n_epochs=1)
    callbacks = [ckpt_every, make_rng_callback(), LearningRateMonitor("step")]
    callbacks += small_map_guard(precision, cfg.accelerator)
    if monitor and cfg.early_stop_patience > 0:      # the best epoch is what gets saved
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best",
                                         monitor=monitor, mode=mode, save_top_k=1,
                                         auto_insert_metric_name=False))
    if monitor and cfg.early_stop_patience > 0:
        from lightning.pytorch.callbacks import EarlyStopping

        callbacks.append(EarlyStopping(monitor=monitor, mode=mode,
                                       patience=cfg.early_stop_patience, check_finite=False))
    if cfg.ema_decay > 0:                 # Lightning's EMAWeightAveraging, picklable
        from medmap.train.ema import EMAWeights

        callbacks.append(EMAWeights(decay=cfg.ema_decay,
                                    update_starting_at_epoch=int(math.ceil(cfg.warmup_epochs))))
    if cfg.progress == "epochs":
        from medmap.train.epoch_lines import EpochLines

        callbacks.append(EpochLines(f"{run_dir.parent.name}/{run_dir.name}", cfg.epochs))
    callbacks += extra_callbacks or []
    loggers = [CSVLogger(run_dir, name="logs", version=""),
               TensorBoardLogger(run_dir, name="tensorboard", version="")]
    return L.Trainer(
        default_root_dir=run_dir, max_epochs=cfg.epochs, accelerator=cfg.accelerator,
        devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy, precision=precision,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip or None, callbacks=callbacks, logger=loggers,
        enable_progress_bar=cfg.progress is True, log_every_n_steps=cfg.log_every_n_steps,
        use_distributed_sampler=False, deterministic=False, enable_model_summary=False,
        num_sanity_val_steps=0,
        # FSDP and DeepSpeed save their own (sharded) checkpoints
        plugins=[] if strategy in ("fsdp", "deepspeed") else [direct_checkpoint_io()],
    )


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """``checkpoints/last.ckpt`` of a run, if any."""
    p = Path(run_dir) / "checkpoints" / "last.ckpt"
    return p if p.exists() else None
