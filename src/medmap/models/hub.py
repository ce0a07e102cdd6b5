"""``save_pretrained`` / ``from_pretrained``: safetensors weights + a JSON config.

A model folder holds ``model.safetensors`` and ``config.json`` with the model type, the
architecture config (modalities, class names, prompts, ...), the preprocessing settings, the
text model identity, the medmap version and git commit. Loading never unpickles anything.

Model classes register themselves where they are defined, with :func:`register_model`; the hub
knows no model by name. ``import medmap.models`` registers the built-in ones.

Example:
    >>> from medmap.models.hub import save_pretrained, from_pretrained
    >>> save_pretrained(model, "runs/finetune/model", preprocess=pp_cfg.to_dict())  # doctest: +SKIP
    >>> model, meta = from_pretrained("runs/finetune/model")                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medmap.config import from_dict, to_dict

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

Builder = Callable[[Any, dict[str, torch.Tensor]], nn.Module]
M = TypeVar("M", bound=type)

# model_type -> (config class, builder(cfg, state_dict) -> module)
_MODEL_TYPES: dict[str, tuple[type, Builder]] = {}


def register_model(name: str, config_cls: type, builder: Builder | None = None) -> Callable[[M], M]:
    """Class decorator: register a model class under ``name`` (its ``model_type``).

    ``builder(cfg, state_dict)`` rebuilds the module before its weights are loaded (default:
    ``cls(cfg)``); use it when buffer shapes depend on the saved state.

    Example:
        >>> @register_model("my_model", MyConfig)      # doctest: +SKIP
        ... class MyModel(nn.Module): ...
    """

    def deco(cls: M) -> M:
        cls.model_type = name
        _MODEL_TYPES[name] = (config_cls, builder or (lambda cfg, state: cls(cfg)))
        return cls

    return deco


def registered_types() -> list[str]:
    """The model types ``from_pretrained`` can rebuild (those imported so far)."""
    return sorted(_MODEL_TYPES)


def model_type_of(model: nn.Module) -> str:
    """The registry name a model class declares in its ``model_type`` attribute."""
    name = getattr(model, "model_type", None)
    if name is None:
        raise ValueError(f"{type(model).__name__} declares no model_type; it cannot be saved")
    return name


def git_commit() -> str | None:
    """The source tree's git commit, when medmap runs from a checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except Exception:
        return None


def save_pretrained(model: nn.Module, out_dir: str | Path, **meta: Any) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (``meta`` adds e.g. ``preprocess``)."""
    from medmap import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    doc = {"model_type": model_type_of(model), "config": to_dict(model.cfg),
           "medmap_version": __version__, "git_commit": git_commit(), **meta}
    (out / CONFIG_NAME).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return out


def load_pretrained_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` document of a model folder, with a clear error if absent."""
    p = Path(path)
    cfg_path = p / CONFIG_NAME
    if not cfg_path.exists() or not (p / WEIGHTS_NAME).exists():
        raise FileNotFoundError(
            f"{p}: not a medmap model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
            "pass the folder written by save_pretrained / a training run's model/ folder")
    return json.loads(cfg_path.read_text(encoding="utf-8"))


def from_pretrained(path: str | Path, map_location: str = "cpu",
                    expect_type: str | tuple[str, ...] | None = None,
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its folder; returns ``(model, config_document)``.
    ``expect_type``: the accepted model type(s); anything else is a ``ValueError``."""
    doc = load_pretrained_config(path)
    mtype = doc.get("model_type")
    accepted = (expect_type,) if isinstance(expect_type, str) else expect_type
    if accepted is not None and mtype not in accepted:
        raise ValueError(f"{path}: holds a {mtype!r} model, expected "
                         f"{' or '.join(repr(t) for t in accepted)}")
    if mtype not in _MODEL_TYPES:
        raise ValueError(f"{path}: unknown model_type {mtype!r}; known: {registered_types()} "
                         "(import the module that defines it first)")
    cfg_cls, builder = _MODEL_TYPES[mtype]
    cfg = from_dict(cfg_cls, doc["config"])
    state = load_file(str(Path(path) / WEIGHTS_NAME), device=map_location)
    model = builder(cfg, state)
    model.load_state_dict(state, strict=True)
    return model.eval(), doc
