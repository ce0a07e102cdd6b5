"""``save_pretrained`` / ``from_pretrained``: safetensors weights + a JSON config + a model card.

A model folder holds ``model.safetensors`` and ``config.json`` with the model type, the
architecture config (modalities, class names, prompts, ...), the preprocessing settings, the
text model identity, the medmap version and git commit. Loading never unpickles anything.

It also holds ``README.md``, a model card for people (as Hugging Face model folders have):
model type, organ, classes, modalities, preprocessing, the training manifest and its size,
the medmap version and commit; ``medmap evaluate`` adds its metrics to it
(:func:`update_model_card`). The card is never read back by medmap.

A folder whose ``config.json`` does not fit its weights (edited, or copied from another model)
is refused with a :class:`ModelFolderError` naming the tensors that differ, not a shape
traceback.

Model classes register themselves where they are defined, with :func:`register_model`; the hub
knows no model by name. ``import medmap.models`` registers the built-in ones.

Example:
    >>> from medmap.models.hub import save_pretrained, from_pretrained
    >>> save_pretrained(model, "runs/finetune/model", preprocess=pp_cfg.to_dict())  # doctest: +SKIP
    >>> model, meta = from_pretrained("runs/finetune/model")                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medmap.config import ConfigError, UserError, from_dict, to_dict

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"


class ModelFolderError(UserError):
    """A model folder cannot be loaded as asked: it is damaged, its ``config.json`` does not
    fit its weights, or it holds another kind of model. The message names the folder and the
    fix."""

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
    """Write ``model.safetensors`` + ``config.json`` (``meta`` adds e.g. ``preprocess``) and
    the model card ``README.md``.

    ``meta`` keys the card shows when present: ``organ``, ``preprocess``, ``text_model``,
    ``init``, and the training data as ``data_manifest`` (path), ``data_cases`` (number of
    cases) and ``data_splits`` (split -> cases). Without ``data_manifest`` the card takes the
    manifest from the run folder's ``config.yaml`` next to ``out_dir``, when there is one.
    """
    from medmap import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    doc = {"model_type": model_type_of(model), "config": to_dict(model.cfg),
           "medmap_version": __version__, "git_commit": git_commit(), **meta}
    (out / CONFIG_NAME).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    doc_line = (type(model).__doc__ or "").strip().splitlines()
    summary = re.sub(r"\s*\(see [^)]*\)", "", doc_line[0]) if doc_line else None
    try:
        write_model_card(out, doc, description=summary)
    except Exception as e:  # the card is for people; never lose a trained model over it
        warnings.warn(f"{out}: could not write {CARD_NAME} ({type(e).__name__}: {e})",
                      stacklevel=2)
    return out


def load_pretrained_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` document of a model folder, with a clear error if absent."""
    p = Path(path)
    cfg_path = p / CONFIG_NAME
    if not cfg_path.exists() or not (p / WEIGHTS_NAME).exists():
        raise FileNotFoundError(
            f"{p}: not a medmap model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
            "pass the folder written by save_pretrained / a training run's model/ folder")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{cfg_path}: not valid JSON ({e}); restore the file written by "
                               "save_pretrained (or re-copy the model folder)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ModelFolderError(f"{cfg_path}: holds no 'config' mapping; restore the file "
                               "written by save_pretrained (or re-copy the model folder)")
    return doc


def _shape_problems(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """How the weights differ from the architecture ``config.json`` builds (empty: they fit)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    shapes = [k for k in want if k in have and want[k] != have[k]]
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]

    def few(keys: list[str], fmt: Callable[[str], str]) -> str:
        shown = ", ".join(fmt(k) for k in keys[:3])
        return shown + (f", ... ({len(keys) - 3} more)" if len(keys) > 3 else "")

    out = []
    if shapes:
        out.append(f"{len(shapes)} tensor(s) differ in shape ("
                   + few(shapes, lambda k: f"{k}: weights {have[k]}, config.json builds "
                                           f"{want[k]}") + ")")
    if missing:
        out.append(f"{len(missing)} tensor(s) of the architecture are not in the weights ("
                   + few(missing, str) + ")")
    if extra:
        out.append(f"{len(extra)} tensor(s) of the weights are not in the architecture ("
                   + few(extra, str) + ")")
    return out


def from_pretrained(path: str | Path, map_location: str = "cpu",
                    expect_type: str | tuple[str, ...] | None = None,
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its folder; returns ``(model, config_document)``.

    ``expect_type``: the accepted model type(s). A folder holding another type, an unknown
    type, a damaged ``model.safetensors`` or a ``config.json`` that does not fit the weights
    (edited to another architecture) is a :class:`ModelFolderError` (a ``ValueError``)."""
    doc = load_pretrained_config(path)
    mtype = doc.get("model_type")
    accepted = (expect_type,) if isinstance(expect_type, str) else expect_type
    if accepted is not None and mtype not in accepted:
        raise ModelFolderError(f"{path}: holds a {mtype!r} model, expected "
                               f"{' or '.join(repr(t) for t in accepted)}")
    if mtype not in _MODEL_TYPES:
        raise ModelFolderError(f"{path}: unknown model_type {mtype!r}; known: "
                               f"{registered_types()} (import the module that defines it first)")
    cfg_cls, builder = _MODEL_TYPES[mtype]
    fix = ("config.json was edited or comes from another model; restore the config.json "
           "saved with these weights (or re-copy the model folder)")
    try:
        cfg = from_dict(cfg_cls, doc["config"])
    except ConfigError as e:
        raise ModelFolderError(f"{path}/{CONFIG_NAME}: 'config' does not fit a {mtype!r} "
                               f"model ({e}); {fix}") from None
    try:
        state = load_file(str(Path(path) / WEIGHTS_NAME), device=map_location)
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise ModelFolderError(f"{path}/{WEIGHTS_NAME}: unreadable ({type(e).__name__}: {e}); "
                               "re-copy the model folder") from None
    nonfinite = [k for k, v in state.items()
                 if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise ModelFolderError(f"{path}/{WEIGHTS_NAME}: {len(nonfinite)} weight tensor(s) hold "
                               f"NaN or inf (first: {nonfinite[0]}); the training run that "
                               "wrote them diverged. Retrain it (e.g. with precision 32-true "
                               "or a lower learning rate)")
    try:
        model = builder(cfg, state)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        raise ModelFolderError(f"{path}: config.json does not build a {mtype!r} model that "
                               f"fits the weights ({type(e).__name__}: {e}); {fix}") from e
    problems = _shape_problems(model, state)
    if problems:
        raise ModelFolderError(f"{path}: config.json does not match {WEIGHTS_NAME}: "
                               + "; ".join(problems) + f"; {fix}")
    model.load_state_dict(state, strict=True)
    return model.eval(), doc


# ---- model card ------------------------------------------------------------------------------
_EVAL_HEAD = "## Evaluation"
_NO_EVAL = "_Not evaluated yet: `medmap evaluate` adds its metrics here._"


def _md(v: Any) -> str:
    """A value as Markdown table text (pipes escaped)."""
    if isinstance(v, (list, tuple)):
        v = ", ".join(str(x) for x in v) if v else "none"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _training_data(doc: dict[str, Any], folder: Path | None) -> list[str]:
    manifest, cases, splits = doc.get("data_manifest"), doc.get("data_cases"), \
        doc.get("data_splits")
    if not manifest and folder is not None:    # a run folder's model/: the run's config.yaml
        try:
            import yaml

            run_cfg = folder.parent / "config.yaml"
            data = (yaml.safe_load(run_cfg.read_text(encoding="utf-8")) or {}).get("data") or {}
            manifest = data.get("manifest") or None
            if manifest and cases is None:
                from medmap.data.manifest import Manifest

                m = Manifest.load(manifest).select(organ=doc.get("organ") or None)
                cases = len(m)
                splits = {s: len(m.select(split=s)) for s in sorted({c.split for c in m})}
        except Exception:
            pass
    if not manifest:
        return ["Not recorded (the model was saved without `data_manifest`)."]
    lines = [f"- manifest: `{manifest}`"]
    if cases is not None:
        lines.append(f"- cases: {cases}" + (" (" + ", ".join(f"{k} {v}" for k, v in
                                                              splits.items()) + ")"
                                            if isinstance(splits, dict) and splits else ""))
    return lines


def model_card(doc: dict[str, Any], description: str | None = None,
               folder: str | Path | None = None) -> str:
    """The model card (Markdown, Hugging Face style front matter) of a ``config.json`` doc;
    missing entries are written as "not recorded"."""
    cfg = doc.get("config") or {}
    mtype = doc.get("model_type") or "unknown"
    organ = doc.get("organ") or cfg.get("organ") or "not recorded"
    classes = cfg.get("classes")
    mods = cfg.get("modalities")
    text = doc.get("text_model") or {}
    enc = cfg.get("encoder")
    rows = [("model type", f"`{mtype}`" + (f" ({description})" if description else "")),
            ("organ", organ),
            ("classes", f"{len(classes)}: {_md(classes)}" if classes else "not recorded"),
            ("modalities", f"{len(mods)}: {_md(mods)}" if mods else "not recorded")]
    if isinstance(enc, dict) and enc.get("name"):
        rows.append(("encoder", enc["name"]))
    if doc.get("init"):
        rows.append(("initialised from", f"`{doc['init']}`"))
    if isinstance(text, dict) and text.get("name"):
        rows.append(("text model", f"`{text['name']}`"))
    rows += [("medmap version", doc.get("medmap_version") or "not recorded"),
             ("git commit", f"`{doc['git_commit']}`" if doc.get("git_commit")
              else "not recorded"),
             ("saved", time.strftime("%Y-%m-%d %H:%M:%S"))]
    tags = ["medmap", "medical-imaging", "mri", "3d", mtype] + ([organ] if doc.get("organ")
                                                                 or cfg.get("organ") else [])
    out = ["---", "library_name: medmap", "tags:", *[f"- {t}" for t in tags], "---", "",
           f"# {organ if organ != 'not recorded' else ''} {mtype} (medmap)".replace("#  ", "# "),
           "", "A model folder written by medmap's `save_pretrained`: `model.safetensors` "
           "(weights; loading never unpickles), `config.json` (architecture and settings, what "
           "`from_pretrained` reads) and this card. For research use; not a medical device.",
           "", "| | |", "|---|---|", *[f"| {k} | {_md(v)} |" for k, v in rows], "",
           "## Preprocessing", ""]
    pre = doc.get("preprocess")
    if isinstance(pre, dict) and pre:
        out += ["Applied to every volume before the model (stored in `config.json`; `predict` "
                "and `evaluate` use it as is):", "", "| setting | value |", "|---|---|",
                *[f"| {k} | {_md(v)} |" for k, v in pre.items()]]
    else:
        out.append("Not recorded.")
    out += ["", "## Training data", "",
            *_training_data(doc, Path(folder) if folder is not None else None),
            "", "## Use", "", "```bash", "medmap predict MODEL_FOLDER case_dir/ --out preds.csv",
            "medmap evaluate MODEL_FOLDER --manifest cases.jsonl --split test", "```", "",
            _EVAL_HEAD, "", _NO_EVAL, ""]
    return "\n".join(out)


def _write_atomic(path: Path, text: str) -> None:
    """Readers (another evaluation updating the card) never see a half-written file."""
    import os
    import uuid

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_model_card(folder: str | Path, doc: dict[str, Any] | None = None,
                     description: str | None = None) -> Path:
    """Write ``folder/README.md`` from ``doc`` (default: the folder's ``config.json``)."""
    p = Path(folder)
    doc = load_pretrained_config(p) if doc is None else doc
    _write_atomic(p / CARD_NAME, model_card(doc, description, p))
    return p / CARD_NAME


def update_model_card(folder: str | Path, key: str, markdown: str) -> Path:
    """Put ``markdown`` into the ``## Evaluation`` section of ``folder/README.md`` under
    ``key`` (one block per key: an evaluation of the same split and manifest replaces its
    earlier block, others are appended). A folder without a card gets one first."""
    p = Path(folder) / CARD_NAME
    if not p.is_file():
        write_model_card(folder)
    text = p.read_text(encoding="utf-8")
    tag = re.sub(r"[^A-Za-z0-9:._/=+-]", "_", key).replace("--", "_")
    begin, end = f"<!-- medmap:{tag} -->", f"<!-- /medmap:{tag} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        i, j = text.index(begin), text.index(end) + len(end)
        text = text[:i] + block + text[j:]
    else:
        text = text.replace(_NO_EVAL + "\n", "", 1)
        if _EVAL_HEAD not in text:
            text = text.rstrip("\n") + f"\n\n{_EVAL_HEAD}\n"
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    _write_atomic(p, text)
    return p
