"""Downstream tasks of a pre-trained vision-language model (MG-3D's evaluation suite).

Every task takes a model folder written by ``save_pretrained`` (MedMAP's ``medmap_clip`` or
MG-3D's ``mg3d``; anything satisfying :class:`~medmap.downstream.vlm.VisionLanguageModel`),
or None for "no pre-training", plus a manifest:

| task | function | metrics |
|---|---|---|
| zero-shot classification with prompt ensembles | :func:`~medmap.downstream.zeroshot.zeroshot` | per-class + macro AUC, accuracy |
| report <-> volume retrieval | :func:`~medmap.downstream.retrieval.retrieval` | R@1/5/10/50, median rank |
| lesion segmentation (SwinUNETR decoder) | :func:`~medmap.downstream.segment.segment` | Dice; masks as NIfTI |
| report generation (Transformer decoder) | :func:`~medmap.downstream.report_gen.report_generation` | BLEU-1..4 |
| linear probe / full fine-tuning | :func:`~medmap.downstream.probe.probe` | accuracy, macro AUC |
| embedding export | :func:`~medmap.downstream.embed.export_embeddings` | .npy + CSV index |
| all of the above per pre-training method | :func:`~medmap.downstream.compare.compare_pretraining` | JSON + Markdown |

Exports are loaded lazily. ``zeroshot``, ``retrieval``, ``segment`` and ``probe`` are both a module and its
main function: import them from the module (``from medmap.downstream.zeroshot import zeroshot``).
"""

from __future__ import annotations

from medmap._lazy import lazy_exports

_EXPORTS = {
    "VisionLanguageModel": "medmap.downstream.vlm",
    "LoadedVLM": "medmap.downstream.vlm",
    "load_vlm": "medmap.downstream.vlm",
    "predict_masks": "medmap.downstream.segment",
    "report_generation": "medmap.downstream.report_gen",
    "bleu_scores": "medmap.downstream.report_gen",
    "export_embeddings": "medmap.downstream.embed",
    "compare_pretraining": "medmap.downstream.compare",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
