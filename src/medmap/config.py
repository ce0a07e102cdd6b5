"""Typed dataclass configs loaded from YAML, with ``a.b=value`` overrides.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opt:
    ...     lr: float = 1e-4
    ...     epochs: int = 10
    >>> cfg = from_dict(Opt, {"lr": 3e-4}, overrides=["epochs=2"])
    >>> cfg.lr, cfg.epochs
    (0.0003, 2)
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class UserError(ValueError):
    """Base of the deliberate, user-facing errors: bad input, not a bug in medmap.

    The message names what is wrong and the fix; the ``medmap`` command prints it as one
    ``error: ...`` line (exit status 2). Anything that is not a ``UserError`` (or a missing
    file / permission problem) reaching the command is treated as a bug and shown with its
    traceback. It subclasses ``ValueError`` so ``except ValueError`` keeps catching it.
    """


class ConfigError(UserError):
    """A config file or override does not fit the typed schema."""


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tagged = _tagged_choice(args, value, where)
        if tagged is not None:
            return _coerce(tagged, value, where)
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, _where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        seq = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


def _tag_of(tp: Any) -> str | None:
    """The default of a dataclass's ``name`` field when it is a ``Literal`` tag, else None."""
    if not dataclasses.is_dataclass(tp):
        return None
    hints = typing.get_type_hints(tp)
    f = next((f for f in dataclasses.fields(tp) if f.name == "name"), None)
    if f is None or typing.get_origin(hints.get("name")) is not typing.Literal:
        return None
    return f.default if f.default is not dataclasses.MISSING else None


def _tagged_choice(args: tuple, value: Any, where: str) -> Any:
    """For a union of tagged dataclasses (a ``name: Literal[...]`` field each) and a mapping
    that names one, the dataclass it names; a ConfigError when the name fits none."""
    tags = {_tag_of(a): a for a in args if _tag_of(a) is not None}
    if not tags or not isinstance(value, dict) or "name" not in value:
        return None
    if value["name"] not in tags:
        raise ConfigError(f"{where}.name: {value['name']!r} is not one of {list(tags)}")
    return tags[value["name"]]


def diff_dict(cfg: Any, default: Any = None) -> dict[str, Any]:
    """The fields of dataclass ``cfg`` that differ from ``default`` (default: its class's
    defaults), nested: what a YAML file needs to hold to rebuild ``cfg`` with
    :func:`load_config`. A nested config of another type than the default (e.g. another
    encoder) is written as its ``name`` tag plus what differs from that type's defaults."""
    default = type(cfg)() if default is None else default
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v, d = getattr(cfg, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(v) and type(v) is type(d):
            sub = diff_dict(v, d)
            if sub:
                out[f.name] = sub
        elif dataclasses.is_dataclass(v):       # another type: its tag + its own non-defaults
            tag = _tag_of(type(v))
            out[f.name] = ({"name": tag, **diff_dict(v)} if tag is not None else to_dict(v))
        elif json.loads(json.dumps(v)) != json.loads(json.dumps(d)):
            out[f.name] = json.loads(json.dumps(v))
    return out


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def from_dict(cls: type[T], data: dict[str, Any] | None, overrides: list[str] | None = None,
              _where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, applying ``overrides`` (``a.b=value``)."""
    data = dict(data or {})
    for ov in overrides or []:
        keys, val = _parse_override(ov)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: {k} is not a section")
        node[keys[-1]] = val
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(
            f"{_where or cls.__name__}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {k: _coerce(hints[k], _onto_default(fields[k], v),
                         f"{_where + '.' if _where else ''}{k}")
              for k, v in data.items()}
    try:
        return cls(**kwargs)
    except UserError:
        raise
    except ValueError as e:  # a config's own checks (__post_init__) on values from the file
        raise ConfigError(f"{_where or cls.__name__}: {e}") from e


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` applied onto ``base``, nested; a mapping whose ``name`` tag differs from the
    base's replaces it (another config type) instead of merging."""
    out = dict(base)
    for k, v in over.items():
        b = out.get(k)
        same_type = isinstance(b, dict) and ("name" not in v or v["name"] == b.get("name")) \
            if isinstance(v, dict) else False
        out[k] = _deep_merge(b, v) if same_type else v
    return out


def _onto_default(f: dataclasses.Field, value: Any) -> Any:
    """A mapping given for a nested config is applied onto the field's own default (so
    ``preprocess: {size: [..]}`` keeps the other settings the enclosing config defaults to),
    unless it names another type with its ``name`` tag."""
    if not isinstance(value, dict):
        return value
    default = _field_default(f)
    if not dataclasses.is_dataclass(default):
        return value
    if "name" in value and _tag_of(type(default)) is not None \
            and value["name"] != getattr(default, "name", None):
        return value
    return _deep_merge(to_dict(default), value)


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | None = None) -> T:
    """Load a YAML file into dataclass ``cls`` (defaults where keys are absent)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} not found")
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = loaded or {}
    return from_dict(cls, data, overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-safe dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return p
