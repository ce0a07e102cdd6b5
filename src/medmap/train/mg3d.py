"""MG-3D pre-training: precomputed text features, the Lightning module and ``pretrain_mg3d``.

The text encoder is frozen, so every report's features are computed once per run, before
training (:class:`MG3DTextTable`): the word tokens (``FrozenTextEncoder.encode_tokens``), the
sentence features (the mean of each sentence's word tokens), each sentence encoded alone (for
SSM; through the encoder's on-disk cache) and the pooled report embedding (``encode``, cached).
The training loop never runs the text model.

Sentences are cut with :func:`medmap.text.sentences.sentence_spans` (the rule of
``split_sentences``); word tokens are mapped to sentences with the fast tokenizer's character
offsets: a token belongs to the sentence whose span holds its first character. Tokens outside
every fragment (``[CLS]``, ``[SEP]``, the ``.`` / ``,`` / ``;`` between fragments) belong to no
sentence but stay in the word sequence. With a slow tokenizer each sentence is tokenised alone
and located in the report's token ids, in order.

A run folder has the layout of :func:`medmap.train.stage.run_stage` (``config.yaml``,
``run_info.json``, ``logs/``, ``tensorboard/``, ``checkpoints/``, ``model/``, ``metrics.json``).

Example:
    >>> from medmap.train.mg3d import pretrain_mg3d
    >>> model_dir = pretrain_mg3d(cfg, "runs/mg3d")          # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from medmap.config import ConfigError, UserError
from medmap.data.datasets import collate_pairs
from medmap.losses.mg3d import LOSS_NAMES, MG3DLoss
from medmap.models.mg3d import MG3DConfig, MG3DModel, sentence_mean
from medmap.train.config import ExperimentConfig
from medmap.train.data import StageDataModule
from medmap.train.engine import OptimConfig
from medmap.train.modules import TrainModule
from medmap.train.stage import Stage, StageData, pair_datasets, run_stage

__all__ = ["MG3DTextTable", "MG3DCollator", "MG3DPretrainModule", "MG3DPretrainStage",
           "complete_mg3d_config", "pretrain_mg3d", "token_sentence_index"]


def token_sentence_index(offsets: Sequence[tuple[int, int]], special: Sequence[int],
                         spans: Sequence[tuple[int, int]]) -> list[int]:
    """Per token, the index of the span (sorted, disjoint ``(start, end)`` character offsets)
    that holds the token's first character; -1 for special tokens and tokens between spans."""
    starts = [s for s, _ in spans]
    out = []
    for (a, b), sp in zip(offsets, special):
        if sp or b <= a:
            out.append(-1)
            continue
        k = bisect.bisect_right(starts, a) - 1
        out.append(k if k >= 0 and a < spans[k][1] else -1)
    return out


def _locate_by_ids(tokenizer, report: str, ids: list[int], special: list[int],
                   spans: Sequence[tuple[int, int]]) -> list[int]:
    """Slow-tokenizer fallback: find each sentence's own token ids in order in ``ids``."""
    out, pos = [-1] * len(ids), 0
    for k, (s, e) in enumerate(spans):
        sub = tokenizer(report[s:e], add_special_tokens=False)["input_ids"]
        for i in range(pos, len(ids) - len(sub) + 1):
            if sub and ids[i:i + len(sub)] == sub and not any(special[i:i + len(sub)]):
                out[i:i + len(sub)] = [k] * len(sub)
                pos = i + len(sub)
                break
    return out


class MG3DTextTable:
    """Frozen text features of a fixed set of reports, computed once (see the module doc).

    ``batch(reports)`` returns the padded tensors :class:`~medmap.models.mg3d.MG3DModel` reads.
    Token features are stored as ``storage_dtype`` (float16 by default: half the memory) and
    returned as float32.
    """

    def __init__(self, encoder, reports: Iterable[str], max_sentences: int = 32,
                 chunk: int = 128, storage_dtype: torch.dtype = torch.float16):
        from medmap.text.sentences import sentence_spans

        uniq = sorted(set(reports))
        if not uniq:
            raise UserError("no report to encode; check the manifest's reports")
        if max_sentences < 1:
            raise ConfigError(f"max_sentences must be >= 1, got {max_sentences}")
        self.index = {r: i for i, r in enumerate(uniq)}
        self.pooled = encoder.encode(uniq).float()                   # (R, T), on-disk cache
        self.dim = self.pooled.shape[1]
        self.pad_id = int(encoder.pad_token_id)
        tok = encoder.tokenizer
        fast = bool(getattr(tok, "is_fast", False))
        self.items: list[dict[str, torch.Tensor]] = []
        sentence_texts: list[list[str]] = []
        for c in range(0, len(uniq), chunk):
            part = uniq[c:c + chunk]
            tf = encoder.encode_tokens(part)
            enc = tok(part, truncation=True, max_length=encoder.max_length,
                      return_special_tokens_mask=True, return_offsets_mapping=fast)
            for j, report in enumerate(part):
                n = int(tf.attention_mask[j].sum())
                ids = tf.input_ids[j, :n]
                if enc["input_ids"][j] != ids.tolist():
                    raise RuntimeError("tokenizer ids differ from the encoder's; cannot map "
                                       "tokens to sentences")
                special = enc["special_tokens_mask"][j]
                spans = sentence_spans(report)
                if fast:
                    sidx = token_sentence_index(enc["offset_mapping"][j], special, spans)
                else:
                    sidx = _locate_by_ids(tok, report, ids.tolist(), special, spans)
                kept = sorted({s for s in sidx if s >= 0})[:max_sentences]
                if kept:
                    remap = {s: k for k, s in enumerate(kept)}
                    sidx = [remap.get(s, -1) for s in sidx]
                    texts = [report[spans[s][0]:spans[s][1]] for s in kept]
                else:   # no fragment survived: the whole report is one sentence
                    sidx = [-1 if sp else 0 for sp in special]
                    texts = [report.strip()]
                feats = tf.features[j, :n]                            # (n, T)
                sidx_t = torch.tensor(sidx, dtype=torch.long)
                sent = sentence_mean(feats[None], sidx_t[None], len(texts))[0]   # (S, T)
                self.items.append({
                    "tokens": feats.to(storage_dtype),
                    "input_ids": ids.clone(),
                    "word_mask": torch.tensor([not s for s in special], dtype=torch.bool),
                    "sentence_index": sidx_t,
                    "sentences": sent.to(storage_dtype),
                })
                sentence_texts.append(texts)
        flat = encoder.encode([s for t in sentence_texts for s in t]).float()   # cached
        for item, emb in zip(self.items, torch.split(flat, [len(t) for t in sentence_texts])):
            item["sentence_emb"] = emb.to(storage_dtype)
        self.sentence_texts = sentence_texts

    def __len__(self) -> int:
        return len(self.items)

    def sentences_of(self, report: str) -> list[str]:
        """The sentence fragments kept for ``report``."""
        return self.sentence_texts[self.index[report]]

    def batch(self, reports: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded features of ``reports`` (see :class:`~medmap.models.mg3d.MG3DModel`)."""
        items = [self.items[self.index[r]] for r in reports]
        B = len(items)
        L = max(it["tokens"].shape[0] for it in items)
        S = max(it["sentences"].shape[0] for it in items)
        out = {
            "text": self.pooled[[self.index[r] for r in reports]],
            "tokens": torch.zeros(B, L, self.dim),
            "token_mask": torch.zeros(B, L, dtype=torch.bool),
            "input_ids": torch.full((B, L), self.pad_id, dtype=torch.long),
            "word_mask": torch.zeros(B, L, dtype=torch.bool),
            "sentence_index": torch.full((B, L), -1, dtype=torch.long),
            "sentences": torch.zeros(B, S, self.dim),
            "sentence_emb": torch.zeros(B, S, self.dim),
            "sentence_mask": torch.zeros(B, S, dtype=torch.bool),
        }
        for i, it in enumerate(items):
            n, s = it["tokens"].shape[0], it["sentences"].shape[0]
            out["tokens"][i, :n] = it["tokens"].float()
            out["token_mask"][i, :n] = True
            out["input_ids"][i, :n] = it["input_ids"]
            out["word_mask"][i, :n] = it["word_mask"]
            out["sentence_index"][i, :n] = it["sentence_index"]
            out["sentences"][i, :s] = it["sentences"].float()
            out["sentence_emb"][i, :s] = it["sentence_emb"].float()
            out["sentence_mask"][i, :s] = True
        return out


class MG3DCollator:
    """Collate (volume, report) pairs and attach ``model_modality`` and the report features."""

    def __init__(self, table: MG3DTextTable, modalities: Sequence[str]):
        self.table, self.modalities = table, list(modalities)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        b = collate_pairs(items)
        b["model_modality"] = torch.tensor([self.modalities.index(m) for m in b["modality"]])
        b.update(self.table.batch(b["report"]))
        return b


class MG3DPretrainModule(TrainModule):
    """MG-3D pre-training step: ``loss(**model(batch))`` gives every enabled loss and their
    weighted sum; each ``*_loss`` term is logged under ``train/`` and ``val/``.

    Training masks are drawn from the module's own CPU generator (seeded with ``optim.seed`` and
    the rank), whose state is saved in every checkpoint: a resumed run draws exactly the masks an
    uninterrupted one would, whatever else consumes the global RNG (e.g. DataLoader iterators).
    Validation masks come from a generator seeded by the batch index (reproducible).
    ``val/retrieval_top1`` is volume-to-report top-1 within each modality (F_I vs F_T).
    ``model.cfg.encoder_lr_scale`` is the vision encoders' learning rate over the rest's.
    """

    model: MG3DModel

    def __init__(self, model: MG3DModel, optim: OptimConfig):
        super().__init__(model, MG3DLoss(model.cfg.losses), optim,
                         lr_scales=((("experts.encoders.", model.cfg.encoder_lr_scale),)
                                    if model.cfg.encoder_lr_scale != 1.0 else ()))
        self._gen: torch.Generator | None = None
        self._pending_gen: torch.Tensor | None = None

    def mask_generator(self) -> torch.Generator:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(
                1_000_003 * (self.optim.seed + 1) + self.global_rank)
            if self._pending_gen is not None:
                self._gen.set_state(self._pending_gen)
                self._pending_gen = None
        return self._gen

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mg3d_mask_rng"] = self.mask_generator().get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("mg3d_mask_rng")
        if state is not None:
            self._gen, self._pending_gen = None, state

    @staticmethod
    def _terms(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in out.items()
                if k.endswith("_loss") or k.startswith("cml_")}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = self._augmented(batch, batch_idx)
        res = self.loss(**self.model(batch, generator=self.mask_generator()))
        bs = batch["image"].shape[0]
        terms = {**self._terms(res), "temperature": 1.0 / self.model.logit_scale.exp().detach()}
        self._log_terms("train", terms, bs)
        self.log("train/loss", res["loss"].detach(), batch_size=bs, prog_bar=True)
        return res["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        g = torch.Generator().manual_seed(10_007 + batch_idx)
        out = self.model(batch, generator=g)
        res = self.loss(**out)
        bs = batch["image"].shape[0]
        self._log_terms("val", {**self._terms(res), "loss": res["loss"]}, bs)
        self._val.append((torch.nn.functional.normalize(out["image_features"].float(), dim=-1),
                          torch.nn.functional.normalize(out["text_features"].float(), dim=-1),
                          batch["model_modality"]))

    def on_validation_epoch_end(self) -> None:
        gathered = self._gather_val()
        if gathered is not None:
            self._log_retrieval(*gathered, self.model.cfg.modalities)


def complete_mg3d_config(cfg, modalities: list[str], text_dim: int, vocab_size: int) -> MG3DConfig:
    """``cfg.mg3d`` with the data-dependent fields filled (organ, modalities, text_dim,
    vocab_size) and ``encoder`` / ``embed_dim`` / ``shared_encoder`` taken from ``cfg.model``
    where left ``None``."""
    from medmap.data.vocab import get_organ

    m = copy.deepcopy(cfg.mg3d)
    m.organ, m.modalities = get_organ(cfg.data.organ).name, list(modalities)
    m.text_dim, m.vocab_size = int(text_dim), int(vocab_size)
    if m.encoder is None:
        m.encoder = copy.deepcopy(cfg.model.encoder)
    if m.embed_dim is None:
        m.embed_dim = cfg.model.embed_dim
    if m.shared_encoder is None:
        m.shared_encoder = cfg.model.shared_encoder
    if not any(getattr(m.losses, n) for n in LOSS_NAMES):
        raise ConfigError("every MG-3D loss is switched off; enable at least one in mg3d.losses")
    return m


class MG3DPretrainStage(Stage):
    """MG-3D pre-training of the modality experts (``cfg.mg3d``, optimised by
    ``cfg.pretrain``)."""

    name, section = "pretrain-mg3d", "pretrain"

    def data(self, cfg: ExperimentConfig) -> StageData:
        return pair_datasets(cfg.data, append_global=cfg.mg3d.global_report)

    def texts(self, cfg: ExperimentConfig, data: StageData, encoder) -> MG3DTextTable:
        self.vocab_size = len(encoder.tokenizer)
        return MG3DTextTable(encoder, [p[3] for d in (data.train, data.val) for p in d.pairs],
                             max_sentences=cfg.mg3d.max_sentences)

    def model(self, cfg: ExperimentConfig, data: StageData, encoder, texts) -> MG3DModel:
        self.mcfg = complete_mg3d_config(cfg, data.modalities, encoder.hidden_size,
                                         self.vocab_size)
        return MG3DModel(self.mcfg)

    def module(self, cfg: ExperimentConfig, model: MG3DModel) -> MG3DPretrainModule:
        return MG3DPretrainModule(model, cfg.pretrain)

    def datamodule(self, cfg: ExperimentConfig, data: StageData, texts) -> StageDataModule:
        mods, o = data.modalities, cfg.pretrain
        groups = ([mods.index(p[1]) for p in data.train.pairs] if self.mcfg.group_by_modality
                  else None)
        return StageDataModule(data.train, data.val, MG3DCollator(texts, mods), o.batch_size,
                               o.num_workers, o.seed, train_groups=groups)

    def save_meta(self) -> dict[str, Any]:
        return {"recipe": "mg3d"}


def pretrain_mg3d(cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False,
                  callbacks: list | None = None, overwrite: bool = False) -> Path:
    """MG-3D pre-training of the modality experts; returns the saved model folder.

    ``cfg``: ``data`` and ``text`` as for MedMAP's ``pretrain``, ``pretrain`` (OptimConfig) for
    the optimisation, ``mg3d`` for the recipe.
    """
    return run_stage(cfg, run_dir, MG3DPretrainStage(), resume, callbacks, overwrite)
