"""CT-VocabFine (MG-3D's vocabulary prompt fine-tuning) for MRI: a few labelled cases per class
fine-tune the text projection -- and, with ``train_proj``, the experts' last (projection)
layers -- with the prompt-classification loss, then zero-shot AUC on the test split.

The loss is the cross-entropy of the zero-shot logits of :mod:`medmap.downstream.zeroshot`
(appearance prompts fused over the case's present modalities, averaged with the case-level name
prompts) against the label. The experts' encoders stay frozen, so each volume's pooled encoder
feature is computed once (``encode_image = proj(mean of tokens)``; the projection is linear) and
training runs on those features in seconds.

Example:
    >>> from medmap.downstream.vocabfine import vocabfine
    >>> res = vocabfine("runs/pretrain/model", "cases.jsonl", n_per_class=8)   # doctest: +SKIP
    >>> res["before"]["auc"], res["after"]["auc"]                               # doctest: +SKIP
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmap.config import UserError
from medmap.data.manifest import Manifest
from medmap.data.vocab import get_organ
from medmap.downstream.common import write_json
from medmap.downstream.vlm import LoadedVLM, VolumeItem, load_vlm
from medmap.downstream.zeroshot import logit_scale_of, zeroshot
from medmap.train.engine import OptimConfig, build_adamw

__all__ = ["vocabfine", "few_shot_cases"]


def few_shot_cases(vlm: LoadedVLM, manifest, split: str, n_per_class: int,
                   seed: int = 0) -> list[VolumeItem]:
    """The volumes of ``n_per_class`` labelled cases per class of ``split`` (seeded draw)."""
    items = [it for it in vlm.volume_items(manifest, split) if it.case.label is not None]
    by_class: dict[int, list[str]] = {}
    for it in items:
        ids = by_class.setdefault(it.case.label_index, [])
        if it.case.case_id not in ids:
            ids.append(it.case.case_id)
    rng = np.random.default_rng(seed)
    keep = set()
    for k, ids in sorted(by_class.items()):
        keep |= {ids[i] for i in rng.permutation(len(ids))[:n_per_class]}
    return [it for it in items if it.case.case_id in keep]


@torch.no_grad()
def _pooled(vlm: LoadedVLM, items: list[VolumeItem], loader) -> torch.Tensor:
    """(len(items), C_enc): each volume's mean encoder token (before the expert projection)."""
    ex = vlm.model.experts
    out = []
    for it in items:
        x = it.load(loader)[None].to(vlm.device)
        out.append(ex.encoders[ex.key(it.modality)](x).tokens.mean(1)[0].float().cpu())
    return torch.stack(out)


def vocabfine(model: str | Path | LoadedVLM, manifest: Manifest | str | Path, n_per_class: int,
              *, train_split: str = "train", eval_split: str = "test", knowledge=None,
              epochs: int = 100, lr: float = 1e-3, train_proj: bool = True,
              out_dir: str | Path | None = None, text_encoder=None, loader=None,
              cache_dir: str | Path | None = None, device: str | None = None, seed: int = 0,
              n_boot: int = 1000) -> dict[str, Any]:
    """Fine-tune on ``n_per_class`` labelled ``train_split`` cases per class, then zero-shot on
    ``eval_split``. Returns (and writes ``vocabfine.json`` to ``out_dir``) ``before`` and
    ``after`` zero-shot metrics and the training losses. The loaded model is left unchanged."""
    from medmap.text.knowledge import load_class_knowledge

    if n_per_class < 1:
        raise UserError(f"--vocabfine N needs N >= 1 labelled cases per class, got {n_per_class}")
    base = load_vlm(model, device=device)
    loader = loader if loader is not None else base.loader(cache_dir)
    vlm = copy.copy(base)
    vlm.model = copy.deepcopy(base.model)
    items = few_shot_cases(vlm, manifest, train_split, n_per_class, seed)
    if not items:
        raise UserError(f"no labelled {vlm.organ} case in split {train_split!r} for VocabFine")
    kn = load_class_knowledge(knowledge, vlm.organ)
    classes, mods = list(get_organ(vlm.organ).classes), vlm.modalities
    enc = text_encoder if text_encoder is not None else vlm.text_encoder()
    app = {m: kn.appearance_prompts(m) for m in mods}
    names = kn.name_prompts()
    raw_app = [[torch.as_tensor(enc.encode(app[m][c])).float() for c in classes] for m in mods]
    raw_name = [torch.as_tensor(enc.encode(names[c])).float() for c in classes]

    pooled = _pooled(vlm, items, loader)                               # (V, C_enc)
    cases = list(dict.fromkeys(it.case.case_id for it in items))
    row = {cid: i for i, cid in enumerate(cases)}
    labels = torch.tensor([next(it.case.label_index for it in items if it.case.case_id == c)
                           for c in cases])
    m_idx = torch.tensor([it.modality_index for it in items])
    c_idx = torch.tensor([row[it.case.case_id] for it in items])
    net = vlm.model.cpu()                # the head trains on the pooled features, on the CPU
    ex = net.experts
    scale = logit_scale_of(net)
    trainable = [net.text_proj] + ([ex.proj] if train_proj else [])
    for p in net.parameters():
        p.requires_grad_(False)
    for mod in trainable:
        for p in mod.parameters():
            p.requires_grad_(True)

    def ens(raw: torch.Tensor) -> torch.Tensor:                         # (P, T) -> (d,)
        return F.normalize(F.normalize(net.text_proj(raw), dim=-1).mean(0), dim=-1)

    def logits() -> torch.Tensor:
        A = torch.stack([torch.stack([ens(r) for r in per]) for per in raw_app])   # (M, C, d)
        Nm = torch.stack([ens(r) for r in raw_name])                                 # (C, d)
        v = torch.stack([ex.proj[ex.key(mods[m])](pooled[i]) for i, m in enumerate(m_idx.tolist())])
        v = F.normalize(v, dim=-1)                                                   # (V, d)
        per_vol = scale * (A[m_idx] @ v[:, :, None])[..., 0]                          # (V, C)
        n = torch.zeros(len(cases)).index_add_(0, c_idx, torch.ones(len(items)))
        app_z = torch.zeros(len(cases), len(classes)).index_add_(0, c_idx, per_vol) / n[:, None]
        case_v = F.normalize(torch.zeros(len(cases), v.shape[1]).index_add_(0, c_idx, v), dim=-1)
        return (app_z + scale * case_v @ Nm.T) / 2                                    # (N, C)

    net.train()
    cfg = OptimConfig(epochs=epochs, lr=lr, weight_decay=0.0, warmup_epochs=0.0, seed=seed)
    opt, sched = build_adamw([(m.named_parameters(), 1.0) for m in trainable], cfg, epochs, 1)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            loss = F.cross_entropy(logits(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    common = dict(split=eval_split, knowledge=knowledge, text_encoder=text_encoder, loader=loader,
                  n_boot=n_boot, seed=seed)
    before = zeroshot(base, manifest, **common)
    after = zeroshot(vlm, manifest, **common)
    res = {"model": base.name, "organ": vlm.organ, "n_per_class": n_per_class,
           "n_train_cases": len(cases), "train_split": train_split, "eval_split": eval_split,
           "epochs": epochs, "lr": lr, "trained": ["text_proj"] + (["experts.proj"] if train_proj
                                                                  else []),
           "train_loss": losses,
           "before": {k: before[k] for k in ("auc", "ci", "accuracy", "n")},
           "after": {k: after[k] for k in ("auc", "ci", "accuracy", "n")}}
    if out_dir is not None:
        write_json(res, Path(out_dir) / "vocabfine.json")
    return res
