"""Typed configs from YAML: tagged encoder types, partial sections onto their defaults, the
"only what differs" dump, and errors that name the field."""

from __future__ import annotations

import pytest

from medmap.config import ConfigError, diff_dict, from_dict, load_config
from medmap.models.encoders import CNNConfig, SwinConfig
from medmap.train.config import ExperimentConfig, check_derived_fields


def test_the_name_tag_picks_the_encoder_type_and_unknown_names_are_refused():
    cfg = from_dict(ExperimentConfig, {"model": {"encoder": {"name": "cnn", "channels": [8]}}})
    assert cfg.model.encoder == CNNConfig(channels=(8,))
    with pytest.raises(ConfigError, match=r"model.encoder.name: 'vit' is not one of"):
        from_dict(ExperimentConfig, {"model": {"encoder": {"name": "vit"}}})
    with pytest.raises(ConfigError, match=r"model.encoder: unknown keys \['channels'\]"):
        from_dict(ExperimentConfig, {"model": {"encoder": {"name": "swin", "channels": [8]}}})


def test_a_partial_section_keeps_the_enclosing_defaults():
    base = ExperimentConfig()
    cfg = from_dict(ExperimentConfig, {"data": {"preprocess": {"size": [32, 32, 32]}},
                                       "model": {"encoder": {"feature_size": 12}}})
    assert cfg.data.preprocess.spacing == base.data.preprocess.spacing is None   # not 1.5 mm
    assert cfg.data.preprocess.size == (32, 32, 32)
    assert cfg.model.encoder == SwinConfig(feature_size=12)
    assert cfg.model.conv_stream == base.model.conv_stream


def test_diff_dict_round_trips_and_holds_only_changes():
    cfg = load_config(ExperimentConfig, None, ["finetune.epochs=3", "model.encoder.name=cnn",
                                               "data.organ=brain"])
    d = diff_dict(cfg)
    assert d == {"data": {"organ": "brain"}, "model": {"encoder": {"name": "cnn"}},
                 "finetune": {"epochs": 3}}
    assert from_dict(ExperimentConfig, d) == cfg
    assert diff_dict(ExperimentConfig()) == {}


def test_literal_options_and_derived_fields_are_checked():
    with pytest.raises(ConfigError, match=r"model.encoder.norm: 'layer' is not one of"):
        from_dict(ExperimentConfig, {"model": {"encoder": {"name": "cnn", "norm": "layer"}}})
    cfg = from_dict(ExperimentConfig, {"model": {"modalities": ["T2WI"]},
                                       "mg3d": {"vocab_size": 10}})
    with pytest.raises(ConfigError) as e:
        check_derived_fields(cfg)
    msg = str(e.value)
    assert "model.modalities is derived" in msg and "set data.modalities instead" in msg
    assert "mg3d.vocab_size is derived" in msg


def test_a_negative_per_sequence_loss_weight_is_refused_naming_the_field_and_the_fix():
    from medmap.config import ConfigError, from_dict
    from medmap.train.config import ExperimentConfig

    with pytest.raises(ConfigError, match=r"modality_weight must be >= 0 \(0: off\), got -0.5"):
        from_dict(ExperimentConfig, {"model": {"losses": {"modality_weight": -0.5}}})
    with pytest.raises(ConfigError, match=r"augment.modality_drop must be in \[0, 1\)"):
        from_dict(ExperimentConfig, {"data": {"augment": {"modality_drop": 1.0}}})


def test_right_angle_turns_need_a_square_axial_size_and_say_which_to_set():
    with pytest.raises(ConfigError, match=r"needs preprocess.size with two equal first sides "
                                          r"\(got \[32, 48, 32\]\); set e.g. preprocess.size"):
        from_dict(ExperimentConfig, {"data": {"augment": {"rotate90_prob": 0.5},
                                              "preprocess": {"size": [32, 48, 32]}}})
    ok = from_dict(ExperimentConfig, {"data": {"augment": {"rotate90_prob": 0.5},
                                               "preprocess": {"size": [32, 32, 16]}}})
    assert ok.data.augment.rotate90_prob == 0.5
