from types import SimpleNamespace

import pytest
import torch

from medmap.config import ConfigError, from_dict
from medmap.train.engine import OptimConfig, build_trainer
from medmap.train.epoch_lines import EpochLines


def _trainer(metrics, epoch=2, sanity=False, rank0=True):
    return SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
                           current_epoch=epoch, sanity_checking=sanity, is_global_zero=rank0)


def test_one_line_per_epoch_with_the_loss_and_the_whole_validation_metrics(capsys):
    cb = EpochLines("liver/pretrain", epochs=16)
    cb.on_train_epoch_end(_trainer({"val/retrieval_top1": 0.25, "val/T2WI_retrieval_top1": 0.5,
                                    "val/C+A_retrieval_top1": 0.0, "train/loss": 1.23456,
                                    "val/retrieval_r5": 0.5, "lr-AdamW": 1e-3}), None)
    assert capsys.readouterr().out == ("  liver/pretrain epoch 3/16: train/loss 1.235, "
                                       "val/retrieval_r5 0.500, val/retrieval_top1 0.250\n")
    cb.on_train_epoch_end(_trainer({"train/loss": 1.0}, sanity=True), None)   # sanity check
    cb.on_train_epoch_end(_trainer({"train/loss": 1.0}, rank0=False), None)   # other DDP ranks
    assert capsys.readouterr().out == ""


def test_progress_epochs_replaces_the_bar_and_reads_from_yaml(tmp_path):
    assert from_dict(OptimConfig, {"progress": "epochs"}).progress == "epochs"
    assert from_dict(OptimConfig, {"progress": "false"}).progress is False
    with pytest.raises(ConfigError, match="progress"):
        from_dict(OptimConfig, {"progress": "sometimes"})
    lines = build_trainer(tmp_path / "liver" / "finetune", OptimConfig(progress="epochs"))
    named = [c for c in lines.callbacks if isinstance(c, EpochLines)]
    assert [c.name for c in named] == ["liver/finetune"] and lines.progress_bar_callback is None
    bar = build_trainer(tmp_path / "b", OptimConfig(progress=True))
    assert not any(isinstance(c, EpochLines) for c in bar.callbacks)
    assert bar.progress_bar_callback is not None
