"""Resolve a model or run folder and load what it holds: the model, its preprocessing, its
text model. ``predict``, ``evaluate`` and every downstream task load models through here.

A *model folder* is what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``);
a *run folder* is a training run's folder, whose ``model/`` is the model folder.

Example:
    >>> from medmap.inference import load_model
    >>> lm = load_model("runs/finetune", expect_type="medmap_classifier")   # doctest: +SKIP
    >>> lm.model, lm.preprocess.size, lm.organ                               # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import medmap.models  # noqa: F401  (registers the built-in model types)
from medmap.data.preprocess import PreprocessConfig
from medmap.models.hub import (CONFIG_NAME, ModelFolderError, from_pretrained,
                               load_pretrained_config)

__all__ = ["LoadedModel", "load_model", "load_classifier", "csa_description", "report_inputs", "resolve_model_dir", "run_manifest", "select_device"]


def select_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_model_dir(path: str | Path) -> Path:
    """``path`` itself when it is a model folder, ``path/model`` when it is a run folder."""
    p = Path(path)
    if not (p / CONFIG_NAME).exists() and (p / "model" / CONFIG_NAME).exists():
        return p / "model"
    return p


def run_manifest(model_dir: str | Path) -> Path:
    """The manifest a training run used: ``data.manifest`` of the run folder's ``config.yaml``
    (the run folder is ``model_dir`` itself or the parent of its ``model/``)."""
    import yaml

    p = Path(model_dir)
    mdir = resolve_model_dir(p)
    for cand in (p / "config.yaml", mdir.parent / "config.yaml"):
        if cand.is_file():
            doc = yaml.safe_load(cand.read_text(encoding="utf-8")) or {}
            manifest = (doc.get("data") or {}).get("manifest")
            if manifest:
                return Path(manifest)
    raise FileNotFoundError(f"{p}: no run config.yaml naming data.manifest next to the model; "
                            "pass the manifest explicitly (--manifest)")


def _parse_identity(identity: str | None) -> dict[str, str]:
    """``pooling`` / ``max_length`` from a FrozenTextEncoder identity string."""
    out: dict[str, str] = {}
    for part in (identity or "").split("|"):
        k, _, v = part.partition("=")
        if k in ("pooling", "max_length") and v:
            out[k] = v
    return out


@dataclass
class LoadedModel:
    """A model plus the data settings its folder stores.

    ``text_model`` / ``text_pooling`` / ``text_max_length`` rebuild the frozen text encoder the
    model was trained with (the folder's ``text_model`` entry); ``preprocess`` is the volume
    preprocessing; ``organ`` the organ of its training cases; ``source`` the folder (None for a
    model built in memory); ``doc`` the folder's ``config.json``.
    """

    model: nn.Module
    preprocess: PreprocessConfig
    organ: str
    text_model: str | None = None
    text_pooling: str | None = None
    text_max_length: int | None = 128
    text_identity: str | None = None
    source: str | None = None
    doc: dict[str, Any] = field(default_factory=dict)
    _text_encoder: Any = None

    @property
    def modalities(self) -> list[str]:
        return list(self.model.cfg.modalities)

    @property
    def name(self) -> str:
        return self.source or "no-pretraining"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def text_encoder(self, cache_dir: str | Path | None = None):
        """The frozen text encoder the model was trained with (built once, then reused)."""
        if self._text_encoder is None:
            if not self.text_model:
                raise ModelFolderError(f"{self.name}: the model folder names no text model "
                                       "(config.json 'text_model'); pass text_encoder=")
            from medmap.text.encoder import FrozenTextEncoder

            enc = FrozenTextEncoder(self.text_model, pooling=self.text_pooling,
                                    max_length=self.text_max_length, cache_dir=cache_dir,
                                    device="cpu")
            if self.text_identity and enc.identity != self.text_identity:
                warnings.warn(f"{self.name}: text model {self.text_model!r} differs from the one "
                              "the model was trained with (identity mismatch); text features "
                              "may not match", stacklevel=2)
            if enc.hidden_size != self.model.cfg.text_dim:
                raise ModelFolderError(f"{self.name}: text model {self.text_model!r} has hidden "
                                       f"size {enc.hidden_size}, the model expects text_dim "
                                       f"{self.model.cfg.text_dim}")
            self._text_encoder = enc
        return self._text_encoder

    def loader(self, cache_dir: str | Path | None = None):
        """A :class:`~medmap.data.cache.VolumeCache` with the model's preprocessing."""
        from medmap.data.cache import VolumeCache
        from medmap.data.preprocess import Preprocessor

        return VolumeCache(cache_dir, Preprocessor(self.preprocess))


def _preprocess(doc: dict[str, Any], mdir: Path,
                override: Mapping[str, Any] | PreprocessConfig | None) -> PreprocessConfig:
    stored = doc.get("preprocess")
    if stored is None:
        raise ModelFolderError(f"{mdir}: config.json stores no 'preprocess' settings; re-save "
                               "the model with save_pretrained(..., "
                               "preprocess=PreprocessConfig(...).to_dict())")
    pdict = dict(stored)
    if override is not None:
        over = (override.to_dict() if isinstance(override, PreprocessConfig) else dict(override))
        changed = {k: v for k, v in over.items() if pdict.get(k) != v}
        if changed:
            warnings.warn(f"preprocessing overridden ({changed}); the model was trained with "
                          f"{ {k: pdict.get(k) for k in changed} }", stacklevel=3)
        pdict.update(over)
    try:
        return PreprocessConfig.from_dict(pdict)
    except ValueError as e:
        raise ModelFolderError(f"{mdir}: config.json 'preprocess': {e}; restore the settings the "
                               "model was saved with") from None


def load_model(path: str | Path, expect_type: str | tuple[str, ...] | None = None, *,
               device: str | torch.device | None = None,
               preprocess_override: Mapping[str, Any] | PreprocessConfig | None = None,
               ) -> LoadedModel:
    """The model in ``path`` (a model folder or a run folder holding ``model/``), on
    ``device`` and in eval mode, with the settings its folder stores.

    ``expect_type``: the accepted ``model_type`` (s); anything else is a ``ValueError`` naming
    what the folder holds. ``preprocess_override``: replace stored preprocessing fields (with a
    warning: the model was trained with the stored ones).
    """
    mdir = resolve_model_dir(path)
    doc = load_pretrained_config(mdir)
    net, doc = from_pretrained(mdir, map_location="cpu", expect_type=expect_type)
    pcfg = _preprocess(doc, mdir, preprocess_override)
    text = doc.get("text_model") or {}
    ident = _parse_identity(text.get("identity"))
    organ = doc.get("organ") or getattr(net.cfg, "organ", "") or ""
    if not organ:
        raise ModelFolderError(f"{mdir}: config.json names no organ; add \"organ\" (e.g. "
                               "\"liver\") or re-save the model with save_pretrained(..., organ=)")
    return LoadedModel(net.to(select_device(device)).eval(), pcfg, organ, text.get("name"),
                       ident.get("pooling"),
                       int(ident["max_length"]) if "max_length" in ident else 128,
                       text.get("identity"), str(mdir), doc)


def load_classifier(model_dir: str | Path, preprocess_override: Mapping[str, Any] | Any = None,
                    device: str | torch.device | None = None):
    """The fine-tuned classifier of a model or run folder (:func:`load_model` restricted to
    ``medmap_classifier``, with an error naming the fix)."""
    try:
        return load_model(model_dir, "medmap_classifier", device=device,
                          preprocess_override=preprocess_override)
    except ValueError as e:
        if "expected 'medmap_classifier'" not in str(e):
            raise
        raise ModelFolderError(f"{e}; evaluation and prediction need a fine-tuned classifier "
                               "(the model/ folder of `medmap finetune`)") from None


def csa_description(cfg) -> str:
    """What guides the model's Transformer stream, in words (evaluate and predict print it)."""
    mode = getattr(cfg, "csa_text", None)
    text = {"knowledge": "class-knowledge descriptions (report-free)",
            "report": "the case's own reports, read at inference (label leakage wherever a "
                      "report states the diagnosis)",
            "modality": "a fixed per-modality prompt (ablation control)",
            "none": "no text"}.get(mode, str(mode))
    if getattr(cfg, "language", "real") == "random":
        text += "; language removed (random text vectors)"
    return text


def report_inputs(text_encoder, reports, modalities, device) -> dict[str, torch.Tensor]:
    """``reports`` / ``report_mask`` model inputs of a batch's per-sequence reports
    (``csa_text="report"`` models only)."""
    B, M = len(reports), len(modalities)
    texts = [(i, j, r.get(m)) for i, r in enumerate(reports) for j, m in enumerate(modalities)
             if isinstance(r.get(m), str) and r.get(m).strip()]
    emb = torch.zeros(B, M, int(text_encoder.hidden_size))
    mask = torch.zeros(B, M, dtype=torch.bool)
    if texts:
        e = torch.as_tensor(text_encoder.encode([t for _, _, t in texts])).float()
        for (i, j, _), v in zip(texts, e):
            emb[i, j], mask[i, j] = v, True
    return {"reports": emb.to(device), "report_mask": mask.to(device)}
