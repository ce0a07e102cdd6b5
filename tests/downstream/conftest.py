"""Shared fixtures: one tiny MedMAP model pre-trained for 1 epoch on the tiny benchmark.

The model is session-scoped (pre-training it once keeps the folder fast); its experiment config
is the conftest's ``tiny_experiment`` setting (2 liver phases, tiny Swin, tiny BERT, 32^3).
"""

import pytest


def _tiny_config(tiny_sim, tiny_bert):
    from medmap.data.preprocess import PreprocessConfig
    from medmap.models.medmap import MedMAPConfig
    from medmap.train.engine import OptimConfig
    from medmap.train.run import ExperimentConfig

    cfg = ExperimentConfig()
    cfg.data.manifest = str(tiny_sim)
    cfg.data.organ = "liver"
    cfg.data.modalities = ["T2WI", "C+A"]
    cfg.data.preprocess = PreprocessConfig(spacing=None, size=(32, 32, 32))
    cfg.data.cache_dir = str(tiny_sim.parent / "volume-cache")
    cfg.text.model = str(tiny_bert)
    cfg.text.cache_dir = str(tiny_sim.parent / "text-cache")
    cfg.model = MedMAPConfig.tiny([], [])
    cfg.pretrain = OptimConfig(epochs=1, batch_size=4, progress=False, lr=1e-3)
    return cfg


@pytest.fixture(scope="session")
def tiny_pretrain_config(tiny_sim, tiny_bert):
    return _tiny_config(tiny_sim, tiny_bert)


@pytest.fixture(scope="session")
def pretrained(tiny_pretrain_config, tmp_path_factory):
    """Folder of a ModalityAwareCLIP pre-trained for 1 epoch (medmap.train.run.pretrain)."""
    from medmap.train.run import pretrain

    return pretrain(tiny_pretrain_config, tmp_path_factory.mktemp("ds-pretrain"))


@pytest.fixture(scope="session")
def vcache(tiny_sim):
    return str(tiny_sim.parent / "volume-cache")


@pytest.fixture(scope="session")
def vlm(pretrained):
    from medmap.downstream.common import load_vlm

    return load_vlm(pretrained, device="cpu")
