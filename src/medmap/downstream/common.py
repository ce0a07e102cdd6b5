"""What every downstream task shares: the model interface, loading, data access and features.

A downstream task runs on a *pre-trained vision-language model* that satisfies
:class:`VisionLanguageModel` -- MedMAP's :class:`~medmap.models.medmap.ModalityAwareCLIP`
(``model_type`` ``"medmap_clip"``) and MG-3D's model (``"mg3d"``) alike -- or on a randomly
initialised ``ModalityAwareCLIP`` ("no pre-training", the baseline of every comparison).

:func:`load_vlm` returns a :class:`LoadedVLM`: the model plus what its folder stores about the
data it was trained on (preprocessing, organ, text model), so a task never needs the training
config. Features:

* :func:`volume_embeddings` -- one global embedding per (case, modality) volume
  (``encode_image``, volumes batched per modality);
* :func:`case_embeddings` -- one per case: the mean of the case's L2-normalised modality
  embeddings, re-normalised (missing modalities are simply absent from the mean);
* :func:`text_embeddings` -- reports through the frozen text encoder and ``text_proj``.

Example:
    >>> from medmap.downstream.common import load_vlm, volume_embeddings
    >>> vlm = load_vlm("runs/pretrain/model")                                  # doctest: +SKIP
    >>> items = vlm.volume_items(Manifest.load("cases.jsonl"), split="test")   # doctest: +SKIP
    >>> emb = volume_embeddings(vlm, items)          # (len(items), embed_dim)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medmap.data.manifest import Case, Manifest
from medmap.data.preprocess import PreprocessConfig
from medmap.data.vocab import GLOBAL_REPORT

__all__ = [
    "VisionLanguageModel", "LoadedVLM", "VolumeItem", "load_vlm", "random_vlm",
    "volume_embeddings", "case_embeddings", "text_embeddings", "project_text", "load_manifest",
    "write_json", "select_device", "KNOWN_MODEL_MODULES",
]

# model_type -> module that registers it with medmap.models.hub (imported on demand)
KNOWN_MODEL_MODULES: dict[str, tuple[str, ...]] = {
    "mg3d": ("medmap.mg3d.model", "medmap.models.mg3d", "medmap.train.mg3d"),
}


@runtime_checkable
class VisionLanguageModel(Protocol):
    """The interface every downstream task relies on (and nothing more).

    * ``cfg``: ``.modalities`` (list of modality names, the index space of ``modality_index``),
      ``.embed_dim``, ``.text_dim`` and ``.encoder`` (an :class:`~medmap.models.encoders.EncoderConfig`);
    * ``experts``: a :class:`~medmap.models.medmap.ModalityExperts` -- ``experts.key(m)``,
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


def select_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _parse_identity(identity: str | None) -> dict[str, str]:
    """``pooling`` / ``max_length`` from a FrozenTextEncoder identity string."""
    out: dict[str, str] = {}
    for part in (identity or "").split("|"):
        k, _, v = part.partition("=")
        if k in ("pooling", "max_length") and v:
            out[k] = v
    return out


@dataclass
class LoadedVLM:
    """A vision-language model plus the data settings its folder stores.

    ``text_model`` / ``text_pooling`` / ``text_max_length`` rebuild the frozen text encoder the
    model was trained with (read from the folder's ``text_model`` entry); ``preprocess`` is the
    volume preprocessing; ``organ`` the organ of its training cases; ``source`` the folder (None
    for a randomly initialised model).
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
                raise ValueError(f"{self.name}: the model folder names no text model "
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
                raise ValueError(f"{self.name}: text model {self.text_model!r} has hidden size "
                                 f"{enc.hidden_size}, the model expects text_dim "
                                 f"{self.model.cfg.text_dim}")
            self._text_encoder = enc
        return self._text_encoder

    def loader(self, cache_dir: str | Path | None = None):
        """A :class:`~medmap.data.datasets.VolumeCache` with the model's preprocessing."""
        from medmap.data.datasets import VolumeCache
        from medmap.data.preprocess import Preprocessor

        return VolumeCache(cache_dir, Preprocessor(self.preprocess))

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


def _ensure_registered(mtype: str | None) -> None:
    import importlib

    from medmap.models import hub

    if "medmap_clip" not in hub._MODEL_TYPES:
        hub._register_builtin()
    if mtype and mtype not in hub._MODEL_TYPES:
        for mod in KNOWN_MODEL_MODULES.get(mtype, (f"medmap.models.{mtype}",)):
            try:
                importlib.import_module(mod)
            except ImportError:
                continue
            if mtype in hub._MODEL_TYPES:
                return


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
    """A random model from an :class:`~medmap.train.run.ExperimentConfig` (its data decide the
    modalities, its text model the text_dim)."""
    from medmap.train.run import build_text_encoder, complete_model_config, load_cases

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
    ``experiment`` (an :class:`~medmap.train.run.ExperimentConfig`); one of them is required.
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
            raise ValueError("no pre-training (model=None) needs a config: pass experiment= "
                             "(an ExperimentConfig, the CLI's --config) or like= (a loaded model)")
        vlm.model.to(dev)
        return vlm
    from medmap.models.hub import from_pretrained, load_pretrained_config

    path = Path(model)
    if path.is_dir() and not (path / "config.json").exists() and (path / "model").is_dir():
        path = path / "model"          # a run folder
    doc = load_pretrained_config(path)
    _ensure_registered(doc.get("model_type"))
    net, doc = from_pretrained(path, map_location="cpu")
    missing = [a for a in ("cfg", "experts", "text_proj", "encode_image") if not hasattr(net, a)]
    if missing:
        raise ValueError(f"{path}: a {doc.get('model_type')!r} model is not a vision-language "
                         f"model (lacks {', '.join(missing)}); pass a pre-trained model folder "
                         "(e.g. runs/pretrain/model)")
    pp = doc.get("preprocess")
    if pp is None:
        raise ValueError(f"{path}: config.json stores no 'preprocess' settings")
    text = doc.get("text_model") or {}
    ident = _parse_identity(text.get("identity"))
    organ = doc.get("organ") or getattr(net.cfg, "organ", "") or ""
    if not organ:
        raise ValueError(f"{path}: config.json names no organ")
    return LoadedVLM(net.to(dev).eval(), PreprocessConfig.from_dict(pp), organ,
                     text.get("name"), ident.get("pooling"),
                     int(ident["max_length"]) if "max_length" in ident else 128,
                     text.get("identity"), str(path), doc)


# ---- features --------------------------------------------------------------------------------
def _batches(n: int, size: int) -> Iterable[range]:
    for s in range(0, n, size):
        yield range(s, min(n, s + size))


@torch.no_grad()
def volume_embeddings(vlm: LoadedVLM, items: Sequence[VolumeItem], loader=None,
                      batch_size: int = 4, normalize: bool = True) -> np.ndarray:
    """(len(items), embed_dim) float32: ``encode_image`` per volume, batched per modality;
    L2-normalised unless ``normalize=False``. ``loader``: anything with ``get(path, modality)``
    (default: the model's preprocessing, no disk cache)."""
    loader = loader if loader is not None else vlm.loader()
    model = vlm.model
    was_training = model.training
    model.eval()
    dev = vlm.device
    out = np.zeros((len(items), int(model.cfg.embed_dim)), np.float32)
    by_mod: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_mod.setdefault(it.modality_index, []).append(i)
    for m, rows in by_mod.items():
        for r in _batches(len(rows), batch_size):
            idx = [rows[j] for j in r]
            x = torch.stack([items[j].load(loader) for j in idx]).to(dev)
            e = model.encode_image(x, torch.full((len(idx),), m, dtype=torch.long, device=dev))
            e = F.normalize(e.float(), dim=-1) if normalize else e.float()
            out[idx] = e.cpu().numpy()
    model.train(was_training)
    return out


def case_embeddings(items: Sequence[VolumeItem], emb: np.ndarray,
                    modality: str | None = None) -> tuple[list[Case], np.ndarray]:
    """One embedding per case: the mean of its (normalised) modality embeddings, re-normalised;
    with ``modality`` only that modality's volume (cases without it are dropped)."""
    order: dict[str, int] = {}
    cases: list[Case] = []
    sums: list[np.ndarray] = []
    for it, e in zip(items, emb):
        if modality is not None and it.modality != modality:
            continue
        k = order.get(it.case.case_id)
        if k is None:
            order[it.case.case_id] = k = len(cases)
            cases.append(it.case)
            sums.append(np.zeros_like(e))
        sums[k] = sums[k] + e / max(np.linalg.norm(e), 1e-12)
    if not cases:
        return [], np.zeros((0, emb.shape[1] if emb.ndim == 2 else 0), np.float32)
    arr = np.stack(sums)
    arr /= np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
    return cases, arr.astype(np.float32)


@torch.no_grad()
def project_text(vlm: LoadedVLM, raw: torch.Tensor, normalize: bool = True) -> np.ndarray:
    """Frozen text-encoder embeddings (T, text_dim) -> the shared space via ``text_proj``."""
    proj = vlm.model.text_proj
    w = next(proj.parameters())
    t = proj(raw.to(w.device, w.dtype)).float()
    if normalize:
        t = F.normalize(t, dim=-1)
    return t.cpu().numpy().astype(np.float32)


def text_embeddings(vlm: LoadedVLM, texts: Sequence[str], text_encoder=None,
                    normalize: bool = True) -> np.ndarray:
    """(len(texts), embed_dim): the texts through the frozen text encoder and ``text_proj``.
    ``text_encoder``: anything with ``encode(list[str]) -> (T, text_dim)`` (default: the
    model's own)."""
    if not texts:
        return np.zeros((0, int(vlm.model.cfg.embed_dim)), np.float32)
    enc = text_encoder if text_encoder is not None else vlm.text_encoder()
    return project_text(vlm, torch.as_tensor(enc.encode(list(texts))).float(), normalize)


def case_report(case: Case, modalities: Sequence[str]) -> str | None:
    """A case-level report: the global report, else the modality reports joined in order."""
    g = case.reports.get(GLOBAL_REPORT)
    if isinstance(g, str) and g.strip():
        return g
    parts = [case.reports[m] for m in modalities
             if isinstance(case.reports.get(m), str) and case.reports[m].strip()]
    return " ".join(parts) if parts else None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(obj: Any, path: str | Path) -> Path:
    """JSON with NaN/Inf as null and numpy scalars as plain numbers."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_jsonable(obj), indent=2), encoding="utf-8")
    return p


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9+._-]", "_", name) or "_"


# ---- a small training loop shared by the fine-tuning tasks ------------------------------------
def adamw_groups(groups: Sequence[tuple[nn.Module, float]], cfg, total_steps: int,
                 steps_per_epoch: int):
    """AdamW over ``(module, lr multiplier)`` groups (no weight decay on biases / norms /
    embeddings, as :func:`medmap.train.engine.configure_adamw`) with the engine's linear
    warm-up + cosine schedule (per step). Returns ``(optimizer, scheduler)``."""
    from medmap.train.engine import warmup_cosine

    params = []
    seen: set[int] = set()
    for module, mult in groups:
        decay, no_decay = [], []
        for n, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim < 2 or "embed" in n or "logit_scale" in n else decay).append(p)
        params += [{"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr * mult},
                   {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr * mult}]
    params = [g for g in params if g["params"]]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total_steps, warm, cfg.min_lr_ratio))
    return opt, sched


def fit(step, dataset, collate, groups: Sequence[tuple[nn.Module, float]], cfg,
        train_modules: Sequence[nn.Module] = ()) -> list[float]:
    """Plain torch training loop: ``cfg`` is an :class:`~medmap.train.engine.OptimConfig`
    (epochs, batch_size, lr, weight_decay, warmup_epochs, min_lr_ratio, gradient_clip, seed).
    Batches follow the engine's :class:`~medmap.train.engine.EpochShuffleSampler` (order depends
    only on seed + epoch); ``step(batch) -> loss``. Returns the mean loss of every epoch."""
    from torch.utils.data import DataLoader

    from medmap.train.engine import EpochShuffleSampler

    if len(dataset) == 0:
        raise ValueError("no training samples")
    sampler = EpochShuffleSampler(len(dataset), cfg.seed, shuffle=True)
    dl = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                    num_workers=cfg.num_workers)
    per_epoch = len(dl)
    opt, sched = adamw_groups(groups, cfg, per_epoch * cfg.epochs, per_epoch)
    params = [p for g in opt.param_groups for p in g["params"]]
    for m in train_modules:
        m.train()
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            tot, n = 0.0, 0
            for batch in dl:
                loss = step(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.gradient_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.gradient_clip)
                opt.step()
                sched.step()
                tot, n = tot + float(loss.detach()), n + 1
            losses.append(tot / max(1, n))
    for m in train_modules:
        m.eval()
    return losses


class ListDataset(torch.utils.data.Dataset):
    """A dataset over a list, ``fn(item)`` applied lazily in ``__getitem__``."""

    def __init__(self, items: Sequence[Any], fn=None):
        self.items, self.fn = list(items), fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.fn(self.items[i]) if self.fn is not None else self.items[i]
