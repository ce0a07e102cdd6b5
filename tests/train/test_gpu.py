"""Training and inference on a CUDA GPU (skipped without one): ``bf16-mixed`` through
Lightning (``precision: auto`` is ``32-true`` on a GPU, where bf16 was measured no faster), the
saved weights are fp32 and finite, and the model trained on the GPU predicts the same on the
CPU."""

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_pretrain_and_finetune_on_gpu_in_bf16_mixed(tiny_experiment, tmp_path):
    from safetensors.torch import load_file

    from medmap.train.medmap import finetune, pretrain

    cfg = tiny_experiment
    for optim in (cfg.pretrain, cfg.finetune):
        optim.accelerator, optim.devices, optim.precision = "gpu", 1, "bf16-mixed"
    pre = pretrain(cfg, tmp_path / "pre")
    ft = finetune(cfg, tmp_path / "ft", init=pre)
    for run in ("pre", "ft"):
        info = json.loads((tmp_path / run / "run_info.json").read_text())
        assert info["precision"] == "bf16-mixed", info
        assert info["accelerator"] == "cuda" and info["device"] != "cpu", info
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        finite = [v for k, v in metrics.items() if "loss" in k]
        assert finite and all(v == v and abs(v) < 1e6 for v in finite), metrics
    weights = load_file(str(ft / "model.safetensors"))
    floats = [t for t in weights.values() if t.is_floating_point()]   # not BN's step counters
    assert floats and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats)


def test_model_trained_on_gpu_predicts_the_same_on_cpu(tiny_experiment, tmp_path):
    from medmap.models.hub import from_pretrained
    from medmap.train.medmap import finetune

    cfg = tiny_experiment
    cfg.finetune.accelerator, cfg.finetune.devices = "gpu", 1
    model_dir = finetune(cfg, tmp_path / "ft")
    model = from_pretrained(model_dir)[0].eval()
    g = torch.Generator().manual_seed(0)
    M = len(cfg.data.modalities)
    x = torch.randn(2, M, 1, 32, 32, 32, generator=g)
    present = torch.ones(2, M, dtype=torch.bool)
    with torch.no_grad():
        cpu = model(x, present)["logits"].softmax(-1)
        gpu = model.cuda()(x.cuda(), present.cuda())["logits"].softmax(-1).cpu()
    assert (cpu - gpu).abs().max() < 1e-3, (cpu - gpu).abs().max()
