"""The report's "Language" section: what the pre-trained vision-language model does with text.

Two figures from the pre-trained model (report-free, on the evaluated split): the zero-shot ROC
curves (:func:`medmap.downstream.zeroshot.zeroshot`) and Recall@K of per-sequence retrieval
against its chance level (:func:`medmap.downstream.retrieval.retrieval`).

Example:
    >>> html = language_section({"zeroshot": zs, "retrieval": rt})     # doctest: +SKIP
"""

from __future__ import annotations

import html
from typing import Any

from medmap.eval.report import _ci, _figure, _fmt, _img, _roc_figure

__all__ = ["language_section", "recall_figure"]


def recall_figure(retrieval: dict[str, Any], ks=(1, 5, 10)) -> str | None:
    """Recall@K per sequence gallery (report -> volume), the mean, and chance, as a PNG tag."""
    per = (retrieval.get("pair") or {}).get("per_modality") or {}
    head = retrieval.get("per_sequence")
    if not per or not head:
        return None
    fig = _figure(5.6, 4.2)
    ax = fig.add_subplot(111)
    for name, m in per.items():
        ax.plot(ks, [m["report_to_volume"][f"R@{k}"] for k in ks], lw=0.9, alpha=0.5,
                marker=".", label=name)
    r2v = head["report_to_volume"]
    ax.plot(ks, [r2v[f"R@{k}"] for k in ks], color="k", lw=2.2, marker="o",
            label="mean over sequences")
    ax.plot(ks, [r2v[f"chance@{k}"] for k in ks], color="#999", lw=1.4, ls="--", label="chance")
    ax.set(xlabel="K", ylabel="Recall@K (report -> volume)", ylim=(0, 1.02), xticks=list(ks),
           title=f"Per-sequence retrieval (gallery ~{head['gallery']:.0f})")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    return _img(fig, "Recall at K against chance")


def language_section(lang: dict[str, Any] | None) -> str:
    """HTML of the zero-shot and retrieval results (``lang``: ``{"zeroshot": ...,
    "retrieval": ..., "model": folder}``); a note when there are none."""
    if not lang:
        return "<p class='note'>No vision-language results (zero-shot, retrieval) were given.</p>"
    parts, figs = [], []
    zs, rt = lang.get("zeroshot"), lang.get("retrieval")
    if lang.get("model"):
        parts.append(f"<p>Pre-trained model: <code>{html.escape(str(lang['model']))}</code>; "
                     "no report reaches these predictions.</p>")
    if zs:
        parts.append(f"<p>Zero-shot classification: macro AUC <b>{_fmt(zs.get('auc'))}</b> "
                     f"(95% CI {_ci(zs.get('ci'))}), accuracy <b>{_fmt(zs.get('accuracy'))}</b> "
                     f"(chance {_fmt(zs.get('chance_accuracy'))}), n = {zs.get('n')}.</p>")
        roc = _roc_figure(zs.get("roc") or [])
        if roc:
            figs.append(roc.replace("ROC curves (one-vs-rest)", "zero-shot ROC"))
    if rt:
        r2v = rt["per_sequence"]["report_to_volume"]
        parts.append("<p>Per-sequence retrieval, report -> volume: " + ", ".join(
            f"R@{k} <b>{_fmt(r2v[f'R@{k}'])}</b> (chance {_fmt(r2v[f'chance@{k}'])})"
            for k in (1, 5, 10)) + ".</p>")
        rf = recall_figure(rt)
        if rf:
            figs.append(rf)
    if figs:
        parts.append(f"<div class='figs'>{''.join(figs)}</div>")
    return "\n".join(parts)
