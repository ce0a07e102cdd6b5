"""Channels-last convolution weights in training on a CPU (``medmap.train.memory_format``):
only the layout changes, never the values, the parameters or the saved weights."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from medmap.train.memory_format import (
    ChannelsLast3d,
    channels_last_convs,
    resolve_memory_format,
)

CL = torch.channels_last_3d


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 8, 3, stride=2, padding=1), nn.BatchNorm3d(8), nn.GELU(),
                         nn.Conv3d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 ** 3, 2))


def test_channels_last_convs_changes_the_layout_only():
    """The same Parameter objects and values, the conv weights (and so the activations)
    channels-last, the fp32 results equal to rounding, a state dict with equal values."""
    plain, net = _net(), _net()
    params = [id(p) for p in net.parameters()]
    assert channels_last_convs(net) == 2
    assert [id(p) for p in net.parameters()] == params
    assert net[3].weight.is_contiguous(memory_format=CL) and not net[3].weight.is_contiguous()
    assert net[5].weight.is_contiguous()                        # the linear layer untouched
    for (k, a), (_, b) in zip(plain.state_dict().items(), net.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(4, 1, 8, 8, 8)
    assert net[:4](x).is_contiguous(memory_format=CL)
    torch.testing.assert_close(net(x), plain(x), rtol=1e-5, atol=1e-5)


def test_a_channels_last_model_saves_and_loads_as_the_same_model(tmp_path):
    """save_pretrained writes contiguous tensors (safetensors refuses others); the folder
    loads into a model whose outputs are the trained one's."""
    from medmap.models.hub import from_pretrained, save_pretrained
    from medmap.models.medmap import MedMAPClassifier, MedMAPConfig

    torch.manual_seed(0)
    model = MedMAPClassifier(MedMAPConfig.tiny(["T2WI", "C+A"], ["cyst", "hcc"]),
                             torch.randn(2, 2, 32)).eval()
    assert channels_last_convs(model) > 0
    save_pretrained(model, tmp_path / "m")
    loaded, _ = from_pretrained(tmp_path / "m")
    images, present = torch.randn(2, 2, 1, 32, 32, 32), torch.ones(2, 2, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images, present)["logits"],
                                   model(images, present)["logits"], rtol=1e-4, atol=1e-5)


def test_auto_is_channels_last_on_a_cpu_and_contiguous_on_a_gpu(monkeypatch):
    import medmap.train.memory_format as MF
    from medmap.train.engine import OptimConfig

    monkeypatch.setattr(MF.torch.cuda, "is_available", lambda: False)
    assert resolve_memory_format("auto", "auto") == "channels_last_3d"
    assert resolve_memory_format("auto", "cpu") == "channels_last_3d"
    assert resolve_memory_format("auto", "gpu") == "contiguous"
    assert resolve_memory_format("contiguous", "cpu") == "contiguous"
    assert resolve_memory_format("channels_last_3d", "cuda") == "channels_last_3d"
    monkeypatch.setattr(MF.torch.cuda, "is_available", lambda: True)
    assert resolve_memory_format("auto", "auto") == "contiguous"
    assert resolve_memory_format("auto", "cpu") == "channels_last_3d"
    with pytest.raises(ValueError, match="memory_format must be auto, contiguous or "
                                         "channels_last_3d, got 'nhwc'"):
        OptimConfig(memory_format="nhwc")


@pytest.mark.parametrize("fmt", ["channels_last_3d", "contiguous"])
def test_the_engine_trains_in_the_configured_layout(tmp_path, fmt):
    """build_trainer adds the callback for channels_last_3d (and not for contiguous); a fit
    through it trains the very parameters the optimiser holds, in that layout, to the weights
    the contiguous layout reaches (within rounding); run_info.json records the layout."""
    from medmap.train.engine import OptimConfig, build_trainer
    from medmap.train.modules import TrainModule
    from medmap.train.stage import record_hardware

    class Fit(TrainModule):
        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.model(batch[0]), batch[1])

    def fit(memory_format, run):
        cfg = OptimConfig(epochs=2, lr=1e-3, accelerator="cpu", precision="32-true",
                          memory_format=memory_format, progress=False, warmup_epochs=0.0)
        module = Fit(_net(), None, cfg)
        torch.manual_seed(1)
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
            torch.randn(16, 1, 8, 8, 8), torch.randint(0, 2, (16,))), batch_size=4)
        trainer = build_trainer(run, cfg)
        trainer.fit(module, data)
        return module, trainer

    before = [p.detach().clone() for p in _net().parameters()]
    module, trainer = fit(fmt, tmp_path / "run")
    assert any(isinstance(c, ChannelsLast3d) for c in trainer.callbacks) == (
        fmt == "channels_last_3d")
    weight = module.model[3].weight
    assert weight.is_contiguous(memory_format=CL) == (fmt == "channels_last_3d")
    held = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(p) for p in module.model.parameters()} <= held
    assert not torch.equal(weight.detach(), before[3])                       # it trained
    ref, _ = fit("contiguous", tmp_path / "ref")
    x = torch.randn(8, 1, 8, 8, 8)          # (AdamW turns the rounding-level gradients of the
    with torch.no_grad():                   # conv bias before batch norm into full steps, which
        torch.testing.assert_close(         # the norm then removes: compare what the nets do)
            module.model.eval()(x), ref.model.eval()(x), rtol=1e-2, atol=1e-3)
    record_hardware(tmp_path, SimpleNamespace(accelerator=trainer.accelerator,
                                              precision="32-true", callbacks=trainer.callbacks))
    assert json.loads((tmp_path / "run_info.json").read_text())["memory_format"] == fmt
