import json

import pytest
from safetensors.torch import load_file

from medmap.data.manifest import Manifest, ManifestError
from medmap.train.medmap import finetune, pretrain


class CrashAtEpoch:
    """Simulates a killed run: raises at the start of epoch ``k``."""

    def __new__(cls, k: int):
        import lightning as L

        class _Crash(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == k:
                    raise RuntimeError(f"simulated kill at epoch {k}")

        return _Crash()


def test_pretrain_then_finetune_writes_a_complete_run(tiny_experiment, tmp_path):
    pre = pretrain(tiny_experiment, tmp_path / "pre")
    doc = json.loads((pre / "config.json").read_text())
    assert doc["model_type"] == "medmap_clip" and doc["config"]["modalities"] == ["T2WI", "C+A"]
    assert doc["preprocess"]["size"] == [32, 32, 32]
    metrics = json.loads((tmp_path / "pre" / "metrics.json").read_text())
    assert "train/T2WI_loss" in metrics and "val/retrieval_top1" in metrics
    ft = finetune(tiny_experiment, tmp_path / "ft", init=pre)
    run = tmp_path / "ft"
    for name in ("config.yaml", "run_info.json", "metrics.json", "checkpoints/last.ckpt",
                 "model/model.safetensors", "logs/metrics.csv"):
        assert (run / name).exists(), name
    # one checkpoint per epoch only on request (optim.keep_epoch_checkpoints)
    assert not list((run / "checkpoints").glob("epoch*.ckpt"))
    info = json.loads((run / "run_info.json").read_text())
    assert info["medmap_version"] and info["stage"] == "finetune"
    # what it computed on: the resolved precision (``auto`` here), accelerator and device
    from medmap.train.engine import resolve_precision

    import torch

    assert info["precision"] == resolve_precision("auto", "auto")
    assert info["accelerator"] == ("cuda" if torch.cuda.is_available() else "cpu")
    # the experts were initialised from stage 1 (not random): config records it
    assert json.loads((ft / "config.json").read_text())["init"] == str(pre)


def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_experiment, tmp_path):
    """Exact resume, with random augmentation on (its draws come from the restored RNG)."""
    from medmap.data.augment import AugmentConfig

    cfg = tiny_experiment
    cfg.data.augment = AugmentConfig(flip_prob=0.5, intensity_scale=0.1, intensity_shift=0.1)
    full = finetune(cfg, tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated kill"):
        finetune(cfg, tmp_path / "killed", callbacks=[CrashAtEpoch(2)])
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").exists()
    resumed = finetune(cfg, tmp_path / "killed", resume=True)
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-6, diff
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.ckpt"):
        finetune(cfg, tmp_path / "never-ran", resume=True)


def test_dataloader_worker_count_never_changes_the_trained_weights(tiny_experiment, tmp_path):
    """``num_workers`` only moves the reading of cached volumes into other processes: with
    random augmentation and dropout on, 0 and 1 workers train the same weights (the loader's
    draws from the global RNG must not depend on whether its workers persist)."""
    from medmap.data.augment import AugmentConfig

    cfg = tiny_experiment
    cfg.data.augment = AugmentConfig(flip_prob=0.5, intensity_scale=0.1, intensity_shift=0.1)
    cfg.model.dropout = 0.3                  # dropout draws from the global RNG
    cfg.finetune.epochs = 3
    weights = []
    for workers in (0, 1):
        cfg.finetune.num_workers = workers
        model = finetune(cfg, tmp_path / f"w{workers}")
        weights.append(load_file(str(model / "model.safetensors")))
    a, b = weights
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) == 0.0


def test_training_refuses_an_invalid_manifest(tiny_experiment, tmp_path):
    m = Manifest.load(tiny_experiment.data.manifest)
    m.cases[0].modalities["T2WI"] = "missing.nii.gz"
    m.cases[1].label = "not_a_class"
    bad = m.save(tmp_path / "bad.jsonl")
    # relative paths of the copy point elsewhere: keep the root by saving next to the data
    bad = m.save(tiny_experiment.data.manifest.replace("manifest.jsonl", "bad.jsonl"))
    tiny_experiment.data.manifest = str(bad)
    with pytest.raises(ManifestError) as e:
        finetune(tiny_experiment, tmp_path / "ft")
    msg = str(e.value)
    assert f"case {m.cases[0].case_id!r}: modalities.T2WI" in msg and "file not found" in msg
    assert f"case {m.cases[1].case_id!r}: label" in msg


@pytest.mark.parametrize("case_alignment", [False, True])
def test_pretrain_resume_with_modality_grouped_batches_equals_uninterrupted(tiny_experiment,
                                                                           tmp_path,
                                                                           case_alignment):
    """Exact resume of pre-training: modality-grouped pair batches (the paper's objective) and
    case batches with the case-level term."""
    cfg = tiny_experiment
    cfg.pretrain.epochs = 3
    cfg.model.losses.case_alignment = case_alignment
    full = pretrain(cfg, tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain(cfg, tmp_path / "killed", callbacks=[CrashAtEpoch(2)])
    resumed = pretrain(cfg, tmp_path / "killed", resume=True)
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-6, diff


def test_report_assisted_finetuning_runs_through_validation(tiny_experiment, tmp_path):
    """csa_text 'report' (the paper's protocol) used to stop at the first validation: the
    validation batches looked up case texts that only the training cases had put in the
    table."""
    cfg = tiny_experiment
    cfg.finetune.epochs = 2
    cfg.model.csa_text = "report"
    m = Manifest.load(cfg.data.manifest).select(organ="liver")
    assert any(c.split == "val" for c in m), "the tiny benchmark needs a validation split"
    with pytest.warns(UserWarning, match="leaks the label"):
        model_dir = finetune(cfg, tmp_path / "ft")
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert "val/acc" in metrics and (model_dir / "model.safetensors").exists()


def test_finetune_early_stopping_keeps_the_best_validation_epoch(tiny_experiment, tmp_path):
    """With ``finetune.early_stop_patience`` the model folder holds the epoch with the best
    validation accuracy (``best.ckpt``), not the last epoch's weights."""
    import torch

    cfg = tiny_experiment
    cfg.finetune.epochs = 3
    cfg.finetune.early_stop_patience = 2
    model_dir = finetune(cfg, tmp_path / "ft")
    best = tmp_path / "ft" / "checkpoints" / "best.ckpt"
    last = tmp_path / "ft" / "checkpoints" / "last.ckpt"
    assert best.exists() and last.exists()
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    saved = load_file(str(model_dir / "model.safetensors"))
    for k, v in saved.items():
        assert torch.equal(state[f"model.{k}"].to(v.dtype), v), k
    curves = [ln for ln in (tmp_path / "ft" / "logs" / "metrics.csv").read_text().splitlines()]
    assert "train/acc" in curves[0] and "val/acc" in curves[0]     # the learning curves


def test_frozen_pretrained_experts_stay_fixed_then_train(tiny_experiment, tmp_path):
    """``finetune.freeze_pretrained_epochs: 1``: in the first epoch the pre-trained experts'
    weights and batch-norm statistics do not move while the new modules learn; from the
    second epoch the experts train too."""
    import lightning as L
    import torch

    from medmap.models.encoders import CNNConfig

    cfg = tiny_experiment
    cfg.model.encoder = CNNConfig(channels=(8, 16), norm="batch")
    cfg.pretrain.epochs, cfg.finetune.epochs = 1, 2
    cfg.finetune.freeze_pretrained_epochs = 1
    pre = pretrain(cfg, tmp_path / "pre")
    snaps: list[dict] = []

    class Snapshot(L.Callback):
        def _take(self, pl_module):
            snaps.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

        def on_train_start(self, trainer, pl_module):
            self._take(pl_module)

        def on_train_epoch_end(self, trainer, pl_module):
            self._take(pl_module)

    finetune(cfg, tmp_path / "ft", init=pre, callbacks=[Snapshot()])
    start, first, second = snaps
    experts = [k for k in start if k.startswith("experts.")]
    assert any("running_mean" in k for k in experts)              # batch norm is checked too
    assert all(torch.equal(start[k], first[k]) for k in experts)
    assert not torch.equal(start["head.1.weight"], first["head.1.weight"])  # new modules learn
    moved = [k for k in experts if k.endswith("weight") and not torch.equal(first[k], second[k])]
    assert moved                                                   # then the experts train
    with pytest.raises(ValueError, match="freeze_pretrained_epochs"):
        type(cfg.finetune)(freeze_pretrained_epochs=-1)
