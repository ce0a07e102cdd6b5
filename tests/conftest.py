import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist: one worker per core, each with one torch thread (two threads per worker
    # on two cores would oversubscribe them); the processes a test starts inherit one thread
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_configure(config):
    # MONAI replaces warnings.showwarning when first imported; imported inside a test's
    # pytest.warns block it would hide the warnings that block expects. Import it once, first,
    # in every process that runs tests (pytest-xdist's controller runs none: ~6 s of CPU)
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import monai  # noqa: F401


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory):
    """A small simulated benchmark (liver + brain, 32^3) shared by the training tests."""
    from medmap.data.sim import simulate

    out = tmp_path_factory.mktemp("sim")
    simulate(out, cases=10, size=32, seed=0, workers=1)
    return out / "manifest.jsonl"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    from medmap.text.testing import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def tiny_experiment_config(tiny_sim, tiny_bert, epochs: tuple[int, int] = (2, 3)):
    """An ExperimentConfig with tiny models on the tiny benchmark (2 liver phases);
    ``epochs`` = (pre-training, fine-tuning)."""
    from medmap.data.preprocess import PreprocessConfig
    from medmap.models.medmap import MedMAPConfig
    from medmap.train.engine import OptimConfig
    from medmap.train.config import ExperimentConfig

    cfg = ExperimentConfig()
    cfg.data.manifest = str(tiny_sim)
    cfg.data.organ = "liver"
    cfg.data.modalities = ["T2WI", "C+A"]
    cfg.data.preprocess = PreprocessConfig(spacing=None, size=(32, 32, 32))
    cfg.data.cache_dir = str(tiny_sim.parent / "volume-cache")
    cfg.text.model = str(tiny_bert)
    cfg.text.cache_dir = str(tiny_sim.parent / "text-cache")
    cfg.model = MedMAPConfig.tiny([], [], text_dim=MedMAPConfig().text_dim)  # derived: default
    cfg.pretrain = OptimConfig(epochs=epochs[0], batch_size=4, progress=False, lr=1e-3)
    cfg.finetune = OptimConfig(epochs=epochs[1], batch_size=4, progress=False, lr=1e-3)
    return cfg


@pytest.fixture(scope="session")
def tiny_experiment_factory(tiny_sim, tiny_bert):
    """``factory(epochs=(pretrain, finetune))`` -> a fresh tiny ExperimentConfig."""
    return lambda epochs=(2, 3): tiny_experiment_config(tiny_sim, tiny_bert, epochs)


@pytest.fixture
def tiny_experiment(tiny_sim, tiny_bert, tmp_path):
    """An ExperimentConfig with tiny models on the tiny benchmark (2 liver phases)."""
    return tiny_experiment_config(tiny_sim, tiny_bert)
