import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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


@pytest.fixture
def tiny_experiment(tiny_sim, tiny_bert, tmp_path):
    """An ExperimentConfig with tiny models on the tiny benchmark (2 liver phases)."""
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
    cfg.pretrain = OptimConfig(epochs=2, batch_size=4, progress=False, lr=1e-3)
    cfg.finetune = OptimConfig(epochs=3, batch_size=4, progress=False, lr=1e-3)
    return cfg
