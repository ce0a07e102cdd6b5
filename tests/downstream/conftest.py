"""Shared fixtures: one tiny MedMAP model pre-trained for 1 epoch on the tiny benchmark.

The model is session-scoped (pre-training it once keeps the folder fast); its experiment config
is the conftest's ``tiny_experiment`` setting (2 liver phases, tiny Swin, tiny BERT, 32^3).
"""

import pytest


@pytest.fixture(scope="session")
def tiny_pretrain_config(tiny_experiment_factory):
    return tiny_experiment_factory(epochs=(1, 1))


@pytest.fixture(scope="session")
def pretrained(tiny_pretrain_config, tmp_path_factory):
    """Folder of a ModalityAwareCLIP pre-trained for 1 epoch (medmap.train.medmap.pretrain)."""
    from medmap.train.medmap import pretrain

    return pretrain(tiny_pretrain_config, tmp_path_factory.mktemp("ds-pretrain"))


@pytest.fixture(scope="session")
def vcache(tiny_sim):
    return str(tiny_sim.parent / "volume-cache")


@pytest.fixture(scope="session")
def vlm(pretrained):
    from medmap.downstream.vlm import load_vlm

    return load_vlm(pretrained, device="cpu")
