"""The pre-trained vision-language model every downstream task runs on, and its volumes.

A downstream task runs on a model that satisfies :class:`VisionLanguageModel` -- MedMAP's
:class:`~medmap.models.medmap.ModalityAwareCLIP` (``model_type`` ``"medmap_clip"``) and MG-3D's
model (``"mg3d"``) alike -- or on a randomly initialised ``ModalityAwareCLIP`` ("no
pre-training", the baseline of every comparison).

:func:`load_vlm` returns a :class:`LoadedVLM`: the model plus what its folder stores about the
data it was trained on (preprocessing, organ, text model; loaded by
:func:`medmap.inference.load_model`), so a task never needs the training config.
:meth:`LoadedVLM.volume_items` lists a split's (case, modality) volumes.

Example:
    >>> from medmap.downstream.vlm import load_vlm
    >>> vlm = load_vlm("runs/pretrain/model")                                  # doctest: +SKIP
    >>> items = vlm.volume_items("cases.jsonl", split="test")                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from medmap.config import UserError
from medmap.data.manifest import Case, Manifest
from medmap.data.preprocess import PreprocessConfig
from medmap.inference import LoadedModel, load_model, select_device

__all__ = ["VisionLanguageModel", "LoadedVLM", "VolumeItem", "load_vlm", "random_vlm",
           "load_manifest"]


@runtime_checkable
class VisionLanguageModel(Protocol):
    """The interface every downstream task relies on (and nothing more).

    * ``cfg``: ``.modalities`` (list of modality names, the index space of ``modality_index``),
      ``.embed_dim``, ``.text_dim`` and ``.encoder`` (an :class:`~medmap.models.encoders.EncoderConfig`);
    * ``experts``: a :class:`~medmap.models.experts.ModalityExperts` -- ``experts.key(m)``,
      ``experts.encoders[key]`` (:class:`~medmap.models.encoders.Encoder3D`; Swin ones have
      ``hidden_states(x)``) and ``experts.encode(x, m)`` -> projected tokens (B, N, embed_dim);
    * ``text_proj``: ``Linear(text_dim -> embed_dim)`` over the frozen text encoder's report
      embeddings (:meth:`medmap.text.encoder.FrozenTextEncoder.encode`);
    * ``encode_image(images (B,1,D,H,W), modality_index (B,)) -> (B, embed_dim)`` (unnormalised).
    """

    cfg: Any
    experts: Any
    text_proj: nn.Module

    def encode_image(self, images: torch.Tensor, modality_index: torch.Tensor) -> torch.Tensor:
        ...


@dataclass
class VolumeItem:
    """One (case, modality) volume of a split, with that modality's report when it has one."""

    case: Case
    modality: str
    modality_index: int          # index into the model's cfg.modalities
    path: str
    report: str | None

    def load(self, loader) -> torch.Tensor:
        """This volume preprocessed by ``loader`` (a VolumeCache), cropped to the case's organ
        mask when the preprocessing has ``roi_mask``: ``(1, D, H, W)``."""
        from medmap.data.datasets import roi_path

        key = getattr(getattr(loader, "cfg", None), "roi_mask", None)
        if key is None:  # no crop (also any duck-typed loader with get(path, modality))
            return loader.get(self.path, self.modality)
        return loader.get(self.path, self.modality, roi_path(self.case, key))


@dataclass
class LoadedVLM(LoadedModel):
    """A vision-language model plus the data settings its folder stores (see
    :class:`~medmap.inference.LoadedModel`), and the volumes of a manifest it can read."""

    def cases(self, manifest: Manifest | str | Path, split: str | None = None,
              labelled: bool = False) -> list[Case]:
        """The model organ's cases of ``split`` (paths resolved) that have one of its
        modalities; ``labelled`` keeps only cases with a label."""
        roi = self.preprocess.roi_mask
        m = load_manifest(manifest, required_masks=[] if roi is None else [roi], organ=self.organ)
        mods = set(self.modalities)
        out = [c for c in m.resolved()
               if c.organ == self.organ and (split is None or c.split == split)
               and mods & set(c.modalities) and (not labelled or c.label is not None)]
        return out

    def volume_items(self, manifest: Manifest | str | Path, split: str | None = None,
                     require_report: bool = False) -> list[VolumeItem]:
        """Every (case, modality) volume of ``split`` in the model's modalities, case order,
        then the model's modality order. The report is the modality's own one (else None)."""
        items = []
        for c in self.cases(manifest, split):
            for i, m in enumerate(self.modalities):
                if m not in c.modalities:
                    continue
                rep = c.reports.get(m)
                rep = rep if isinstance(rep, str) and rep.strip() else None
                if require_report and rep is None:
                    continue
                items.append(VolumeItem(c, m, i, c.modalities[m], rep))
        return items


def load_manifest(manifest: Manifest | str | Path, required_masks: Sequence[str] = (),
                  organ: str | None = None) -> Manifest:
    """The manifest (only ``organ``'s cases when given), validated as training validates it:
    every problem (missing file, unknown modality or label, a missing ``required_masks`` entry,
    ...) is one ``ManifestError`` line naming the case and the field."""
    from medmap.data.validate import require_valid

    source = None if isinstance(manifest, Manifest) else manifest
    m = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    return require_valid(m.select(organ=organ), source, required_masks=required_masks)


def random_vlm(model_cfg, preprocess: PreprocessConfig, organ: str | None = None,
               text_model: str | None = None, text_pooling: str | None = None,
               text_max_length: int | None = 128, seed: int = 0) -> LoadedVLM:
    """"No pre-training": a seeded, randomly initialised ``ModalityAwareCLIP`` of ``model_cfg``
    (a :class:`~medmap.models.medmap.MedMAPConfig`)."""
    from medmap.models.medmap import MedMAPConfig, ModalityAwareCLIP

    if not isinstance(model_cfg, MedMAPConfig):
        from medmap.config import from_dict, to_dict

        keep = {f for f in MedMAPConfig.__dataclass_fields__}
        model_cfg = from_dict(MedMAPConfig, {k: v for k, v in to_dict(model_cfg).items()
                                             if k in keep})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ModalityAwareCLIP(copy.deepcopy(model_cfg))
    return LoadedVLM(model.eval(), preprocess, organ or model_cfg.organ, text_model,
                     text_pooling, text_max_length, None, None, {"model_type": "medmap_clip"})


def _from_experiment(experiment) -> LoadedVLM:
    """A random model from an :class:`~medmap.train.config.ExperimentConfig` (its data decide
    the modalities, its text model the text_dim)."""
    from medmap.train.medmap import complete_model_config
    from medmap.train.stage import build_text_encoder, load_cases

    _, mods = load_cases(experiment.data)
    enc = build_text_encoder(experiment.text)
    mcfg = complete_model_config(experiment, mods, enc.hidden_size)
    vlm = random_vlm(mcfg, experiment.data.preprocess, experiment.data.organ,
                     experiment.text.model, experiment.text.pooling, experiment.text.max_length,
                     seed=experiment.pretrain.seed)
    vlm._text_encoder = enc
    return vlm


def load_vlm(model: str | Path | LoadedVLM | None, *, experiment=None, like: LoadedVLM | None = None,
             device: str | torch.device | None = None, seed: int = 0) -> LoadedVLM:
    """A :class:`LoadedVLM` from a model folder (``save_pretrained``), or "no pre-training".

    ``model=None`` builds a randomly initialised ``ModalityAwareCLIP`` (seed ``seed``) with the
    architecture, preprocessing and text model of ``like`` (another loaded model) or else of
    ``experiment`` (an :class:`~medmap.train.config.ExperimentConfig`); one of them is required.
    A ``LoadedVLM`` passes through (moved to ``device`` when given).
    """
    dev = select_device(device)
    if isinstance(model, LoadedVLM):
        model.model.to(dev)
        return model
    if model is None:
        if like is not None:
            vlm = random_vlm(like.model.cfg, like.preprocess, like.organ, like.text_model,
                             like.text_pooling, like.text_max_length, seed=seed)
            vlm.text_identity = like.text_identity
            vlm._text_encoder = like._text_encoder
        elif experiment is not None:
            vlm = _from_experiment(experiment)
        else:
            raise UserError("no pre-training (model=None) needs a config: pass experiment= "
                            "(an ExperimentConfig, the CLI's --config) or like= (a loaded model)")
        vlm.model.to(dev)
        return vlm
    lm = load_model(model, device=dev)
    net = lm.model
    missing = [a for a in ("cfg", "experts", "text_proj", "encode_image") if not hasattr(net, a)]
    if missing:
        raise UserError(f"{lm.source}: a {lm.doc.get('model_type')!r} model is not a "
                        f"vision-language model (lacks {', '.join(missing)}); pass a pre-trained "
                        "model folder (e.g. runs/pretrain/model)")
    return LoadedVLM(**{f: getattr(lm, f) for f in LoadedModel.__dataclass_fields__})
