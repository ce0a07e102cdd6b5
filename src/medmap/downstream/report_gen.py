"""Report generation: a small Transformer decoder over a pre-trained expert's visual tokens.

Unit: one (case, modality) volume and that modality's own report (the pairs the experts were
pre-trained on). Memory = the expert's projected tokens ``experts.encode(x, modality)``
(B, N, embed_dim) -> ``Linear + LayerNorm`` to ``d_model``, plus a learned embedding of the
modality (so the decoder knows which sequence it describes). The encoder is frozen by default
(``train_encoder=False``: tokens are computed once), the decoder is trained from scratch.

Text: the pre-trained model's own Hugging Face tokenizer (that of its frozen text encoder). The
output vocabulary is compacted to the tokenizer ids that occur in the training reports plus
PAD / BOS / EOS / UNK (a 30k-way softmax would dominate a small decoder); generated ids are
mapped back and detokenised with ``tokenizer.decode``. Training: teacher forcing,
cross-entropy (PAD ignored), ``nn.TransformerDecoder`` (pre-norm, causal mask), learned
positions. Decoding: greedy, up to ``max_len`` tokens or EOS.

ROUGE-L: :func:`rouge_l` (``rouge-score``). Clinical efficacy: :mod:`medmap.downstream.clinical`.

BLEU-1..4: NLTK's ``corpus_bleu`` (cumulative n-gram BLEU with the brevity penalty, one
reference per report, no smoothing -- an order without any match gives 0: the standard corpus-level definition used by report
generation papers) on lower-cased word tokens (``\\w+``, punctuation dropped).

Example:
    >>> from medmap.downstream.report_gen import report_generation
    >>> res = report_generation("runs/pretrain/model", "sim/manifest.jsonl", "runs/gen")  # doctest: +SKIP
    >>> res["bleu"]["BLEU-4"]                                                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medmap.config import UserError
from medmap.data.manifest import Manifest
from medmap.downstream.common import write_json
from medmap.downstream.vlm import LoadedVLM, VolumeItem, load_vlm
from medmap.metrics import mean_ci
from medmap.train.loop import ListDataset, fit
from medmap.train.engine import OptimConfig

__all__ = ["ReportGenConfig", "ReportGenerator", "CompactVocab", "bleu_scores", "bleu_tokens",
           "rouge_l",
           "train_report_generator", "generate_reports", "report_generation", "load_tokenizer"]

PAD, BOS, EOS, UNK = 0, 1, 2, 3


@dataclass
class ReportGenConfig:
    """Decoder architecture (``d_model`` 0 = the model's embed_dim)."""

    d_model: int = 0
    heads: int = 4
    layers: int = 2
    ff_mult: int = 4
    dropout: float = 0.1
    max_len: int = 64


def bleu_tokens(text: str) -> list[str]:
    """Lower-cased word tokens used for BLEU."""
    return re.findall(r"\w+", text.lower())


def bleu_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 (NLTK ``corpus_bleu``, cumulative uniform weights, one reference per
    hypothesis, no smoothing)."""
    from nltk.translate.bleu_score import corpus_bleu

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references vs {len(hypotheses)} hypotheses")
    if not references:
        return {f"BLEU-{n}": float("nan") for n in range(1, 5)}
    refs = [[bleu_tokens(r)] for r in references]
    hyps = [bleu_tokens(h) for h in hypotheses]
    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    with warnings.catch_warnings():   # NLTK warns when an n-gram order has no match (BLEU 0)
        warnings.simplefilter("ignore")
        scores = {f"BLEU-{n}": float(corpus_bleu(refs, hyps, weights=w))
                  for n, w in enumerate(weights, 1)}
    # without smoothing NLTK returns ~1e-78 instead of 0 when an n-gram order has no match
    return {k: (v if v > 1e-9 else 0.0) for k, v in scores.items()}


def rouge_l(references: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each (reference, hypothesis) pair (Google's ``rouge-score``, the
    reference implementation of ROUGE-1.5.5's LCS score, no stemming); the metric is their
    mean."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [float(scorer.score(r, h)["rougeL"].fmeasure) for r, h in zip(references, hypotheses)]


class CompactVocab:
    """Tokenizer ids of the training reports <-> a compact output vocabulary."""

    def __init__(self, tokenizer, ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.ids = sorted(set(int(i) for i in ids))            # compact index 4.. -> HF id
        self.index = {h: i + 4 for i, h in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids) + 4

    @classmethod
    def build(cls, tokenizer, texts: Sequence[str], max_len: int) -> CompactVocab:
        ids = [i for t in texts for i in cls._hf_ids(tokenizer, t, max_len)]
        return cls(tokenizer, ids)

    @staticmethod
    def _hf_ids(tokenizer, text: str, max_len: int) -> list[int]:
        return tokenizer(text, add_special_tokens=False, truncation=True,
                         max_length=max_len - 2)["input_ids"]

    def encode(self, text: str, max_len: int) -> list[int]:
        """BOS + compact ids + EOS (at most ``max_len``)."""
        return [BOS] + [self.index.get(i, UNK) for i in self._hf_ids(self.tokenizer, text, max_len)] + [EOS]

    def decode(self, seq: Sequence[int]) -> str:
        hf = [self.ids[i - 4] for i in seq if i >= 4]
        return self.tokenizer.decode(hf, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=True).strip()


class ReportGenerator(nn.Module):
    """Transformer decoder: memory = projected visual tokens + modality embedding."""

    def __init__(self, cfg: ReportGenConfig, vocab_size: int, visual_dim: int, n_modalities: int):
        super().__init__()
        d = cfg.d_model or visual_dim
        self.cfg = cfg
        self.mem_proj = nn.Sequential(nn.Linear(visual_dim, d), nn.LayerNorm(d))
        self.modality_embed = nn.Embedding(n_modalities, d)
        self.tok_embed = nn.Embedding(vocab_size, d, padding_idx=PAD)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.max_len, d))
        layer = nn.TransformerDecoderLayer(d, cfg.heads, cfg.ff_mult * d, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.layers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size)
        nn.init.normal_(self.pos_embed, std=0.02)

    def memory(self, tokens: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.mem_proj(tokens) + self.modality_embed(modality)[:, None]   # (B, N, d)

    def forward(self, memory: torch.Tensor, seq: torch.Tensor,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """memory (B, N, d), seq (B, L) compact ids, memory_mask (B, N) bool (True = real
        token; None: all) -> logits (B, L, V)."""
        L = seq.shape[1]
        x = self.tok_embed(seq) + self.pos_embed[:L]
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=seq.device), 1)
        pad = None if memory_mask is None else ~memory_mask
        h = self.decoder(x, memory, tgt_mask=causal, tgt_key_padding_mask=seq == PAD,
                         memory_key_padding_mask=pad)
        return self.head(self.norm(h))

    @torch.no_grad()
    def greedy(self, memory: torch.Tensor,
               memory_mask: torch.Tensor | None = None) -> list[list[int]]:
        B = memory.shape[0]
        seq = torch.full((B, 1), BOS, dtype=torch.long, device=memory.device)
        done = torch.zeros(B, dtype=torch.bool, device=memory.device)
        for _ in range(self.cfg.max_len - 1):
            nxt = self(memory, seq, memory_mask)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            seq = torch.cat([seq, nxt[:, None]], 1)
            done |= nxt == EOS
            if done.all():
                break
        out = []
        for row in seq[:, 1:].tolist():
            out.append(row[:row.index(EOS)] if EOS in row else row)
        return out


def load_tokenizer(vlm: LoadedVLM):
    """The Hugging Face tokenizer of the model's frozen text encoder."""
    if vlm._text_encoder is not None and hasattr(vlm._text_encoder, "tokenizer"):
        return vlm._text_encoder.tokenizer
    if not vlm.text_model:
        raise UserError(f"{vlm.name}: the model folder names no text model; pass tokenizer=")
    from transformers import AutoTokenizer

    from medmap.text.encoder import _quiet_transformers, resolve_model_path

    folder = resolve_model_path(vlm.text_model)
    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _visual_tokens(vlm: LoadedVLM, loader, items: Sequence[VolumeItem], grad: bool = False,
                   batch_size: int = 4) -> list[torch.Tensor]:
    model, dev = vlm.model, vlm.device
    out: list[torch.Tensor] = [None] * len(items)  # type: ignore[list-item]
    with torch.set_grad_enabled(grad):
        for s in range(0, len(items), batch_size):
            chunk = list(range(s, min(len(items), s + batch_size)))
            for m in sorted({items[i].modality for i in chunk}):
                rows = [i for i in chunk if items[i].modality == m]
                x = torch.stack([items[i].load(loader) for i in rows]).to(dev)
                tok = model.experts.encode(x, m)
                for i, t in zip(rows, tok):
                    out[i] = t if grad else t.detach()
    return out


def _pad(seqs: list[list[int]]) -> torch.Tensor:
    L = max(len(s) for s in seqs)
    return torch.tensor([s + [PAD] * (L - len(s)) for s in seqs], dtype=torch.long)


def _memory(gen: ReportGenerator, units: Sequence[Sequence[int]], tokens: dict[int, torch.Tensor],
            mods: Sequence[int], dev) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decoder memory of each unit (one volume, or every volume of a case): its volumes' projected
    tokens plus their modality embeddings, concatenated -> (B, L, d) and a padding mask (None
    when every unit has the same length)."""
    per = [torch.cat([gen.memory(tokens[i][None].to(dev),
                                 torch.tensor([mods[i]], device=dev))[0] for i in u])
           for u in units]                                            # each (L_u, d)
    L = max(m.shape[0] for m in per)
    if all(m.shape[0] == L for m in per):
        return torch.stack(per), None
    mem = per[0].new_zeros(len(per), L, per[0].shape[1])
    mask = torch.zeros(len(per), L, dtype=torch.bool, device=dev)
    for k, m in enumerate(per):
        mem[k, :m.shape[0]], mask[k, :m.shape[0]] = m, True
    return mem, mask


def case_units(items: Sequence[VolumeItem]) -> tuple[list[list[int]], list[str]]:
    """Per case with a global report: the indices of its volumes in ``items`` and the report."""
    from medmap.data.vocab import GLOBAL_REPORT

    units: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        g = it.case.reports.get(GLOBAL_REPORT)
        if isinstance(g, str) and g.strip():
            units.setdefault(it.case.case_id, []).append(i)
    keys = list(units)
    return [units[k] for k in keys], [items[units[k][0]].case.reports[GLOBAL_REPORT] for k in keys]


def train_report_generator(vlm: LoadedVLM, items: Sequence[VolumeItem], loader,
                           cfg: ReportGenConfig | None = None, optim: OptimConfig | None = None,
                           tokenizer=None, train_encoder: bool = False,
                           units: Sequence[Sequence[int]] | None = None,
                           targets: Sequence[str] | None = None,
                           ) -> tuple[ReportGenerator, CompactVocab, list[float]]:
    """Train a decoder on ``items``; returns (generator, vocab, losses).

    Default unit: each item with its own report. ``units`` / ``targets``: groups of item
    indices (e.g. every volume of a case, :func:`case_units`) and the report each generates.
    """
    cfg = cfg or ReportGenConfig()
    optim = optim or OptimConfig(epochs=20, batch_size=4, lr=1e-3, warmup_epochs=1.0)
    if units is None:
        units = [[i] for i, it in enumerate(items) if it.report]
        targets = [items[u[0]].report for u in units]
    if not units:
        raise UserError("no (volume, report) pair to train the report generator on")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(vlm)
    vocab = CompactVocab.build(tokenizer, list(targets), cfg.max_len)
    gen = ReportGenerator(cfg, len(vocab), int(vlm.model.cfg.embed_dim),
                          len(vlm.modalities)).to(vlm.device)
    seqs = [vocab.encode(t, cfg.max_len) for t in targets]
    mods = [it.modality_index for it in items]
    dev = vlm.device
    ds = ListDataset(list(range(len(units))))
    if train_encoder:
        def tokens_of(idx):
            return dict(zip(idx, _visual_tokens(vlm, loader, [items[i] for i in idx], grad=True)))
        groups = [(gen, 1.0), (vlm.model.experts, 0.1)]
        train_modules = [gen, vlm.model]
    else:
        used = sorted({i for u in units for i in u})
        cache = dict(zip(used, _visual_tokens(vlm, loader, [items[i] for i in used])))

        def tokens_of(idx):
            return cache
        groups = [(gen, 1.0)]
        train_modules = [gen]

    def step(idx: list[int]) -> torch.Tensor:
        seq = _pad([seqs[k] for k in idx]).to(dev)
        batch_units = [units[k] for k in idx]
        mem, mask = _memory(gen, batch_units, tokens_of(sorted({i for u in batch_units for i in u})),
                            mods, dev)
        logits = gen(mem, seq[:, :-1], mask)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1),
                               ignore_index=PAD)

    losses = fit(step, ds, list, groups, optim, train_modules=train_modules)
    return gen, vocab, losses


@torch.no_grad()
def generate_reports(gen: ReportGenerator, vocab: CompactVocab, vlm: LoadedVLM,
                     items: Sequence[VolumeItem], loader, batch_size: int = 8,
                     units: Sequence[Sequence[int]] | None = None) -> list[str]:
    """Greedy-decoded report of every item's volume (or of every unit of items)."""
    gen.eval()
    vlm.model.eval()
    units = [[i] for i in range(len(items))] if units is None else units
    mods = [it.modality_index for it in items]
    out: list[str] = []
    for s in range(0, len(units), batch_size):
        chunk = units[s:s + batch_size]
        used = sorted({i for u in chunk for i in u})
        tokens = dict(zip(used, _visual_tokens(vlm, loader, [items[i] for i in used])))
        mem, mask = _memory(gen, chunk, tokens, mods, vlm.device)
        out += [vocab.decode(seq) for seq in gen.greedy(mem, mask)]
    return out


def report_generation(model: str | Path | LoadedVLM | None, manifest: Manifest | str | Path,
                      out_dir: str | Path | None = None, *, train_split: str = "train",
                      eval_split: str = "test", epochs: int = 20, batch_size: int = 4,
                      lr: float = 1e-3, cfg: ReportGenConfig | None = None,
                      train_encoder: bool = False, seed: int = 0, tokenizer=None, loader=None,
                      cache_dir: str | Path | None = None, device: str | None = None,
                      experiment=None, per_case: bool = False) -> dict[str, Any]:
    """Train on ``train_split``'s (volume, report) pairs, generate for ``eval_split``'s, BLEU
    and clinical efficacy (:mod:`medmap.downstream.clinical`: accuracy / macro F1 of the
    diagnosis read from each generated report, beside the same on the true reports).

    ``per_case``: the unit is a whole case -- the memory holds every sequence's tokens (each
    with its modality embedding) and the target is the case's global impression.
    With ``out_dir``: ``report_gen.json`` (metrics), ``generated.jsonl`` (case, modality,
    reference, generated) and ``generator/`` (weights + config + vocabulary).
    """
    vlm = load_vlm(model, experiment=experiment, device=device, seed=seed)
    if train_encoder:     # never modify the caller's model in place
        import copy

        vlm = copy.copy(vlm)
        vlm.model = copy.deepcopy(vlm.model)
    if loader is None:
        loader = vlm.loader(cache_dir)
    train = vlm.volume_items(manifest, train_split, require_report=not per_case)
    test = vlm.volume_items(manifest, eval_split, require_report=not per_case)
    tr_units = tr_targets = te_units = None
    refs = [it.report for it in test]
    if per_case:
        (tr_units, tr_targets), (te_units, refs) = case_units(train), case_units(test)
        if not tr_units:
            raise UserError(f"no {vlm.organ} case of split {train_split!r} has a global report; "
                            "--per-case generates the global impression")
    optim = OptimConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        warmup_epochs=min(1.0, epochs / 10), weight_decay=0.01)
    torch.manual_seed(seed)
    if cfg is None:     # a global impression is longer than one sequence's report
        cfg = ReportGenConfig(max_len=96) if per_case else ReportGenConfig()
    gen, vocab, losses = train_report_generator(vlm, train, loader, cfg, optim, tokenizer,
                                                train_encoder, tr_units, tr_targets)
    hyps = generate_reports(gen, vocab, vlm, test, loader, units=te_units) if refs else []
    firsts = [test[u[0]] for u in te_units] if per_case else test
    rl = rouge_l(refs, hyps)
    clinical = None
    if refs:
        from medmap.data.vocab import get_organ
        from medmap.downstream.clinical import DiagnosisExtractor, clinical_efficacy

        clinical = clinical_efficacy(hyps, refs, [it.case.label for it in firsts],
                                     get_organ(vlm.organ).classes,
                                     DiagnosisExtractor.for_organ(vlm.organ))
    res: dict[str, Any] = {"model": vlm.name, "organ": vlm.organ, "train_split": train_split,
                           "eval_split": eval_split, "per_case": per_case,
                           "n_train": len(tr_units) if per_case else len(train),
                           "n_eval": len(refs),
                           "epochs": epochs, "vocab_size": len(vocab), "train_loss": losses,
                           "bleu": bleu_scores(refs, hyps) if refs else None,
                           "rouge_l": float(np.mean(rl)) if rl else None,
                           "rouge_l_ci": mean_ci(rl),
                           "clinical": clinical,
                           "config": asdict(cfg), "train_encoder": train_encoder}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "generated.jsonl").open("w", encoding="utf-8") as f:
            for it, ref, h in zip(firsts, refs, hyps):
                f.write(json.dumps({"case_id": it.case.case_id,
                                    "modality": "case" if per_case else it.modality,
                                    "reference": ref, "generated": h},
                                   ensure_ascii=False) + "\n")
        from safetensors.torch import save_file

        (out / "generator").mkdir(exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in gen.state_dict().items()},
                  str(out / "generator" / "model.safetensors"))
        write_json({"config": asdict(cfg), "vocab_hf_ids": vocab.ids, "model": vlm.name,
                    "modalities": vlm.modalities, "visual_dim": int(vlm.model.cfg.embed_dim)},
                   out / "generator" / "config.json")
        write_json(res, out / "report_gen.json")
    return res
