"""The experiment config every stage reads: data, text encoder, models and optimisation.

A YAML file in ``configs/`` holds only what differs from these defaults (see
:func:`medmap.config.diff_dict`); the resolved config is saved with every run
(``RUN/config.yaml``). Fields a stage derives from the data or the text encoder
(``model.modalities``, ``model.classes``, ``model.organ``, ``model.text_dim`` and the same under
``mg3d``, plus ``mg3d.vocab_size``) are not for users: setting them is a :class:`ConfigError`
naming the field to set instead (see :func:`check_derived_fields`).

Example:
    >>> from medmap.config import load_config
    >>> cfg = load_config(ExperimentConfig, None, ["data.organ=brain", "finetune.epochs=3"])
    >>> cfg.data.organ, cfg.finetune.epochs
    ('brain', 3)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medmap.config import ConfigError
from medmap.data.augment import AugmentConfig
from medmap.data.preprocess import PreprocessConfig
from medmap.models.medmap import MedMAPConfig
from medmap.models.mg3d import MG3DConfig
from medmap.train.engine import OptimConfig


@dataclass
class DataConfig:
    """Which cases and how they are preprocessed."""

    manifest: str = ""
    organ: str = "liver"
    modalities: list[str] = field(default_factory=list)   # empty: those present in the data
    cache_dir: str | None = None                          # preprocessed-volume cache
    preprocess: PreprocessConfig = field(
        default_factory=lambda: PreprocessConfig(spacing=None, size=(64, 64, 64)))
    validate: bool = True                                 # refuse an invalid manifest
    # random flips / intensity jitter of training batches (every training stage)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        size = tuple(self.preprocess.size)
        if self.augment.rotate90_prob and size[0] != size[1]:
            raise ValueError(f"augment.rotate90_prob turns the volumes in the plane of their "
                             f"first two axes, which needs preprocess.size with two equal first "
                             f"sides (got {list(size)}); set e.g. preprocess.size: "
                             f"[{size[0]}, {size[0]}, {size[2]}] or augment.rotate90_prob: 0")


@dataclass
class TextConfig:
    """The frozen text encoder."""

    model: str = "minilm"          # "minilm" (bundled), a local folder or a Hub id (BioBERT)
    pooling: str | None = None     # cls / mean; None: the model's own default
    max_length: int = 128
    cache_dir: str | None = None   # on-disk embedding cache
    # class-knowledge YAML (CSA guidance, zero-shot prompts); None: the one shipped with medmap
    knowledge: str | None = None


@dataclass
class ExperimentConfig:
    """Everything a MedMAP / MG-3D experiment needs; YAML files in ``configs/`` fill it."""

    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: MedMAPConfig = field(default_factory=MedMAPConfig)
    pretrain: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    finetune: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    # MG-3D pre-training recipe (medmap.train.mg3d.pretrain_mg3d): masking, fusion layers and
    # loss switches / weights (mg3d.losses); encoder / embed_dim / shared_encoder left null
    # follow model.*
    mg3d: MG3DConfig = field(default_factory=MG3DConfig)


# section -> {derived field: what to set instead}
DERIVED_FIELDS: dict[str, dict[str, str]] = {
    "model": {"modalities": "data.modalities", "classes": "data.organ", "organ": "data.organ",
              "text_dim": "text.model"},
    "mg3d": {"modalities": "data.modalities", "organ": "data.organ", "text_dim": "text.model",
             "vocab_size": "text.model"},
}


def check_derived_fields(cfg: ExperimentConfig) -> None:
    """Raise a :class:`ConfigError` when a user set a field the stages derive."""
    problems = []
    default = ExperimentConfig()
    for section, fields_ in DERIVED_FIELDS.items():
        have, base = getattr(cfg, section), getattr(default, section)
        for name, instead in fields_.items():
            if getattr(have, name) != getattr(base, name):
                problems.append(f"{section}.{name} is derived from the data and the text "
                                f"encoder; remove it and set {instead} instead")
    if problems:
        raise ConfigError("; ".join(problems))


__all__ = ["ExperimentConfig", "DataConfig", "TextConfig", "DERIVED_FIELDS",
           "check_derived_fields"]
