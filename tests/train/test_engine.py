"""The training engine's settings."""

import pytest


def test_auto_num_workers():
    """num_workers: auto (the default) comes from the cores available; an int stays."""
    from medmap.config import from_dict
    from medmap.train.engine import OptimConfig, auto_num_workers, available_cpus

    assert [auto_num_workers(1, cpus=c) for c in (1, 2, 3, 4, 8, 16, 64)] == [0, 0, 1, 2, 6, 8, 8]
    assert auto_num_workers(4, cpus=16) == 2 and auto_num_workers([0, 1], cpus=8) == 2
    assert OptimConfig().num_workers == auto_num_workers(1, cpus=available_cpus())
    assert isinstance(OptimConfig().num_workers, int)
    assert from_dict(OptimConfig, {"num_workers": "auto"}).num_workers == OptimConfig().num_workers
    assert from_dict(OptimConfig, {}, overrides=["num_workers=3"]).num_workers == 3
    with pytest.raises(ValueError, match="num_workers"):
        OptimConfig(num_workers=-1)


def test_the_rng_callback_pickles_for_ddp_spawn():
    """``strategy: ddp_spawn`` pickles the trainer's callbacks into each process: the RNG-state
    callback (a module-level class in medmap.train.rng)
    survives the round trip with its pending state (a local class did not: "Can't pickle local
    object", measured with `medmap finetune ... finetune.strategy=ddp_spawn`)."""
    import pickle

    from medmap.train.engine import make_rng_callback

    cb = make_rng_callback()
    cb.load_state_dict({"rng": {"python": 1}})
    back = pickle.loads(pickle.dumps(cb))
    assert type(back) is type(cb) and type(cb).__name__ == "RNGStateCallback"
    assert back._pending == {"python": 1}


def test_checkpoints_are_written_straight_to_the_file_atomically(tmp_path, monkeypatch):
    import torch

    from medmap.train.engine import OptimConfig, build_trainer, direct_checkpoint_io

    io = direct_checkpoint_io()
    ckpt = {"epoch": 3, "state_dict": {"w": torch.arange(6.0)}}
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    io.save_checkpoint(ckpt, target)
    back = io.load_checkpoint(target)
    assert back["epoch"] == 3 and torch.equal(back["state_dict"]["w"], ckpt["state_dict"]["w"])
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]     # no temp file left

    def interrupted(obj, f, *a, **k):     # a save that dies half-way keeps the old checkpoint
        open(f, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 4}, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["epoch"] == 3
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    with pytest.raises(TypeError, match="storage_options"):          # Lightning's own rules
        io.save_checkpoint(ckpt, target, storage_options={"x": 1})
    trainer = build_trainer(tmp_path / "t", OptimConfig(epochs=1))
    assert type(trainer.strategy.checkpoint_io).__name__ == "DirectCheckpointIO"


def test_the_trainer_pickles_for_ddp_spawn(tmp_path):
    """``strategy: ddp_spawn`` pickles the whole trainer into each process: its callbacks, its
    strategy and the strategy's checkpoint IO (a local class broke `medmap finetune ...
    finetune.devices=2 finetune.strategy=ddp_spawn` with "Can't pickle local object
    'direct_checkpoint_io.<locals>.DirectCheckpointIO'")."""
    import pickle

    from medmap.train.engine import OptimConfig, build_trainer

    cfg = OptimConfig(epochs=1, devices=2, accelerator="cpu", strategy="ddp_spawn",
                      early_stop_patience=2, ema_decay=0.9)
    trainer = build_trainer(tmp_path / "t", cfg, monitor="val/acc")
    back = pickle.loads(pickle.dumps(trainer))
    assert type(back.strategy.checkpoint_io).__name__ == "DirectCheckpointIO"
    assert [type(c).__name__ for c in back.callbacks] == [type(c).__name__
                                                         for c in trainer.callbacks]
    assert "EMAWeights" in [type(c).__name__ for c in back.callbacks]


def test_the_picklable_ema_update_is_torchs():
    import pickle

    import torch
    from torch.optim.swa_utils import get_ema_avg_fn

    from medmap.train.ema import EMAUpdate, EMAWeights

    ema, cur = torch.randn(5), torch.randn(5)
    update = pickle.loads(pickle.dumps(EMAUpdate(0.9)))
    assert torch.equal(update(ema, cur, 3), get_ema_avg_fn(0.9)(ema, cur, 3))
    assert isinstance(EMAWeights(decay=0.9)._kwargs["avg_fn"], EMAUpdate)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradients_are_clipped_to_the_global_norm_under_a_fused_adamw(precision):
    """fp32 and bf16-mixed (no loss scaler) train with the fused AdamW, which Lightning's own
    clipping refuses under mixed precision; the module clips itself: gradients larger than
    ``gradient_clip`` leave with exactly that global norm, as ``clip_grad_norm_`` gives."""
    import lightning as L
    import torch

    from medmap.train.engine import OptimConfig
    from medmap.train.modules import TrainModule

    seen = []

    def norm(params):
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()

    class Tiny(TrainModule):
        def training_step(self, batch, batch_idx):
            return 1e3 * (self.model(batch[0]) ** 2).mean()          # large gradients

        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                        gradient_clip_algorithm=None):
            params = [p for g in optimizer.param_groups for p in g["params"]]
            before = norm(params)
            ref = [p.grad.clone() for p in params]
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)
            scale = gradient_clip_val / (before + 1e-6)
            same = all(torch.allclose(p.grad, r * scale, rtol=1e-5) for p, r in zip(params, ref))
            seen.append((before, norm(params), optimizer.defaults["fused"], same))

    torch.manual_seed(0)
    module = Tiny(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                                      torch.nn.Linear(16, 4)), None, OptimConfig(lr=1e-3))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 8)),
                                       batch_size=4)
    L.Trainer(accelerator="cpu", precision=precision, max_epochs=1, gradient_clip_val=0.5,
              logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, data)
    assert len(seen) == 2
    for before, after, fused, same in seen:
        assert before > 0.5 and after == pytest.approx(0.5, rel=1e-4) and fused and same


@pytest.mark.parametrize("clip,algorithm", [(0.5, "norm"), (None, "norm"), (0.5, "value")])
def test_a_non_finite_gradient_stops_training_before_the_weights_turn_nan(clip, algorithm):
    """A step whose gradient is inf (the demo's liver fine-tuning met one from a broken bf16
    kernel, clipped the garbage, then trained on NaN for 19 epochs) stops the run with an error
    naming the epoch, the step and the fix, with clipping by norm, by value or off; the weights
    keep the last good step's values."""
    import lightning as L
    import torch

    from medmap.train.engine import OptimConfig
    from medmap.train.modules import TrainingDivergedError, TrainModule

    class Blows(TrainModule):
        def training_step(self, batch, batch_idx):
            out = (self.model(batch[0]) ** 2).mean()
            return out * (1e39 if batch_idx == 2 else 1.0)     # inf in fp32 at the third step

    torch.manual_seed(0)
    module = Blows(torch.nn.Linear(8, 4), None, OptimConfig(lr=1e-3))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 8)),
                                       batch_size=4)
    trainer = L.Trainer(accelerator="cpu", precision="32-true", max_epochs=2,
                        gradient_clip_val=clip, gradient_clip_algorithm=algorithm,
                        logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(TrainingDivergedError, match=r"epoch 0, step 2: the gradient norm is "
                                                    r"(inf|nan).*precision=32-true"):
        trainer.fit(module, data)
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
    assert trainer.global_step == 2                  # two good steps taken, the third refused


def test_a_fit_with_ema_ends_on_the_averaged_weights(tmp_path):
    """ema_decay > 0: the engine's picklable EMA callback averages during the fit and leaves
    the averaged weights in the module (not the last step's)."""
    import torch
    from torch import nn

    from medmap.train.engine import OptimConfig, build_trainer
    from medmap.train.modules import TrainModule

    class Fit(TrainModule):
        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self.model(batch[0]), batch[1])

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.randn(16, 3), torch.randn(16, 1)), batch_size=4)
    finals = {}
    for decay in (0.0, 0.9):
        torch.manual_seed(1)
        cfg = OptimConfig(epochs=3, lr=1e-1, accelerator="cpu", precision="32-true",
                          ema_decay=decay, warmup_epochs=0.0, progress=False)
        module = Fit(nn.Linear(3, 1), None, cfg)
        build_trainer(tmp_path / f"ema{decay}", cfg).fit(module, data)
        finals[decay] = module.model.weight.detach().clone()
    assert not torch.allclose(finals[0.0], finals[0.9])      # averaged, not the last step's
    assert torch.isfinite(finals[0.9]).all()
