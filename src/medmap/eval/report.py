"""Self-contained HTML evaluation report.

One file, no external resources: every figure is a base64 PNG drawn with matplotlib's Agg
canvas (the object API, so the global pyplot backend is left alone), styles are inline CSS.
Sections: run summary, metric table with bootstrap CIs, per-class table, ROC curves per class,
confusion matrix, t-SNE of the fused features coloured by class, localisation metrics of the
Grad-CAMs, an interactive 3D CAM viewer (NiiVue, inlined with its data: :mod:`medmap.eval.viewer`;
the page stays one file that opens offline) and CAM overlays on the axial slice through the
lesion for a few correct and wrong cases per class (the fallback without JavaScript).

A small inline script sets ``data-images-total`` / ``data-images-loaded`` on ``<body>`` once
the page has loaded (how many ``<img>`` decoded with a non-zero natural width), so a headless
browser can check that the figures render.

Example:
    >>> html = render_report(result, labels=y, probs=p, fusion=f, overlays=[])   # doctest: +SKIP
    >>> write_report("eval/report.html", result, labels=y, probs=p, fusion=f)    # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["render_report", "write_report", "figure_to_data_uri", "baselines_section"]

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;
 max-width:1100px;color:#1f2328;background:#fff;line-height:1.4}
h1{font-size:1.6em;border-bottom:2px solid #d0d7de;padding-bottom:6px}
h2{font-size:1.25em;margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:1.05em;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:right}
th{background:#f6f8fa}
td.l,th.l{text-align:left}
.meta td{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.figs img{max-width:100%;border:1px solid #eaeef2}
.case{margin:6px 0 14px}
.case img{max-width:100%;height:auto;display:block}
.case .cap{font-size:.9em;color:#57606a;margin-bottom:2px}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.note{color:#57606a;font-size:.9em}
.nv-controls{display:flex;flex-wrap:wrap;gap:14px;margin:6px 0;font-size:.92em}
"""

_SCRIPT = """
(function(){
  function check(){
    var imgs=document.images, ok=0;
    for(var i=0;i<imgs.length;i++){ if(imgs[i].complete && imgs[i].naturalWidth>0){ok++;} }
    document.body.setAttribute('data-images-total', String(imgs.length));
    document.body.setAttribute('data-images-loaded', String(ok));
  }
  window.addEventListener('load', check);
})();
"""


# ---- figures --------------------------------------------------------------------------------
def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def figure_to_data_uri(fig) -> str:
    """PNG of a matplotlib figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img src="{figure_to_data_uri(fig)}" alt="{html.escape(alt)}">'


def _colors(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


def _roc_figure(roc: list[dict[str, Any]]) -> str | None:
    curves = [r for r in roc if r.get("fpr") is not None]
    if not curves:
        return None
    fig = _figure(5.2, 4.6)
    ax = fig.add_subplot(111)
    cols = _colors(len(roc))
    for i, r in enumerate(roc):
        if r.get("fpr") is None:
            continue
        auc = r.get("auc")
        lab = f"{r['class']} (AUC {auc:.3f})" if auc is not None else r["class"]
        ax.plot(r["fpr"], r["tpr"], color=cols[i], lw=1.6, label=lab)
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
           title="ROC curves (one-vs-rest)")
    ax.legend(fontsize=7, loc="lower right")
    return _img(fig, "ROC curves")


def _confusion_figure(cm: list[list[int]], classes: Sequence[str]) -> str:
    a = np.asarray(cm)
    k = len(classes)
    side = max(3.6, 0.55 * k + 2.4)
    fig = _figure(side, side)
    ax = fig.add_subplot(111)
    ax.imshow(a, cmap="Blues", vmin=0, vmax=max(1, int(a.max())))
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(a[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if a[i, j] > a.max() / 2 and a.max() > 0 else "black")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), [str(c) for c in classes], fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _img(fig, "confusion matrix")


def _tsne_figure(fusion: np.ndarray, labels: np.ndarray, pred: np.ndarray,
                 classes: Sequence[str], seed: int = 0) -> str | None:
    from medmap.eval.tsne import tsne_embedding, tsne_method

    n = fusion.shape[0]
    if n < 2:
        return None
    xy = tsne_embedding(fusion, seed=seed)
    fig = _figure(7.2, 4.6)
    ax = fig.add_subplot(111)
    cols = _colors(len(classes))
    for k, name in enumerate(classes):
        sel = labels == k
        good, bad = sel & (pred == k), sel & (pred != k)
        if good.any():
            ax.scatter(xy[good, 0], xy[good, 1], color=cols[k], marker="o", s=36,
                       label=str(name), edgecolors="k", linewidths=0.4)
        if bad.any():
            ax.scatter(xy[bad, 0], xy[bad, 1], color=cols[k], marker="x", s=40,
                       label=None if good.any() else str(name))
    unl = labels < 0
    if unl.any():
        ax.scatter(xy[unl, 0], xy[unl, 1], color="#999", marker=".", s=30, label="unlabelled")
    ax.set(title=f"Fused features: {tsne_method(n)}", xticks=[], yticks=[])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="true class (x = misclassified)", title_fontsize=7)
    return _img(fig, "t-SNE of fused features")


# CAM overlay panels per row: 8 liver phases wrap into two rows of 4 (fits the page width)
_CAM_COLUMNS = 4


def _overlay_figure(ov: dict[str, Any]) -> str:
    panels = ov["panels"]
    cols = max(1, min(len(panels), _CAM_COLUMNS))
    rows = -(-len(panels) // cols)
    fig = _figure(2.3 * cols, 2.6 * rows)
    for i, p in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = np.asarray(p["image"], dtype=np.float64)
        lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
        ax.imshow(img.T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.imshow(np.asarray(p["cam"]).T, cmap="jet", alpha=0.4, vmin=0, vmax=1, origin="lower")
        mask = p.get("mask")
        if mask is not None and np.asarray(mask).max() > 0 and np.asarray(mask).min() == 0:
            ax.contour(np.asarray(mask, dtype=np.float64).T, levels=[0.5], colors="lime",
                       linewidths=1.0, origin="lower")
        ax.set_title(str(p["modality"]), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return _img(fig, f"Grad-CAM of case {ov['case_id']}")


# ---- HTML -----------------------------------------------------------------------------------
def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def _ci(ci: Sequence[Any] | None) -> str:
    if not ci or ci[0] is None:
        return "&ndash;"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _meta_table(info: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th class='l'>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>"
                   for k, v in info.items() if v is not None)
    return f"<table class='meta'>{rows}</table>"


def _metrics_section(m: dict[str, Any]) -> str:
    ci = m.get("ci", {})
    lvl = int(round(100 * ci.get("level", 0.95)))
    rows = [("Accuracy", m.get("accuracy"), _ci(ci.get("accuracy"))),
            ("Balanced accuracy", m.get("balanced_accuracy"), "&ndash;"),
            ("AUC (macro one-vs-rest)" if len(m["classes"]) > 2 else "AUC", m.get("auc"),
             _ci(ci.get("auc")))]
    body = "".join(f"<tr><td class='l'>{n}</td><td>{_fmt(v)}</td><td>{c}</td></tr>"
                   for n, v, c in rows)
    out = [f"<table><tr><th class='l'>metric</th><th>value</th><th>{lvl}% CI</th></tr>{body}"
           "</table>",
           f"<p class='note'>{m['n']} labelled cases; CIs: percentile bootstrap over cases "
           f"({m.get('n_boot', 0)} resamples, {m.get('n_boot_auc', 0)} with two or more classes "
           "for AUC).</p>"]
    pc = "".join(
        f"<tr><td class='l'>{html.escape(r['class'])}</td><td>{r['support']}</td>"
        f"<td>{_fmt(r['precision'])}</td><td>{_fmt(r['recall'])}</td><td>{_fmt(r['f1'])}</td>"
        f"<td>{_fmt(r['auc'])}</td></tr>" for r in m["per_class"])
    out.append("<h3>Per class</h3><table><tr><th class='l'>class</th><th>support</th>"
               f"<th>precision</th><th>recall</th><th>F1</th><th>AUC (one-vs-rest)</th></tr>{pc}"
               "</table>")
    return "\n".join(out)


def _localisation_section(loc: dict[str, Any] | None) -> str:
    if not loc or not loc.get("overall", {}).get("n"):
        return ("<p class='note'>No case of this split has a lesion mask: no localisation "
                "metrics.</p>")
    rows = []
    for name, s in list(loc["per_modality"].items()) + [("all modalities", loc["overall"])]:
        rows.append(f"<tr><td class='l'>{html.escape(name)}</td><td>{s['n']}</td>"
                    f"<td>{_fmt(s['pointing_game'])}</td>"
                    f"<td>{_fmt(s.get('pointing_chance'))}</td><td>{_fmt(s['cam_auc'])}</td></tr>")
    return ("<table><tr><th class='l'>modality</th><th>cases</th><th>pointing game</th>"
            f"<th>random point</th><th>CAM AUC</th></tr>{''.join(rows)}</table>"
            "<p class='note'>Grad-CAM of the predicted class on each modality's expert feature "
            "map. Pointing game: share of cases whose CAM maximum lies inside the lesion mask; "
            "random point: the same for a uniformly random voxel (the lesion's mean share of the "
            "volume). "
            "CAM AUC: ROC AUC of CAM values separating lesion from non-lesion voxels "
            "(0.5 = chance).</p>")


def _overlay_section(overlays: Sequence[dict[str, Any]], classes: Sequence[str]) -> str:
    if not overlays:
        return "<p class='note'>No CAM overlays (no labelled case selected).</p>"
    parts = ["<p class='note'>Axial slice through the lesion (mask centroid; CAM maximum when the "
             "case has no mask). Grey: the modality's preprocessed volume; colour: Grad-CAM of "
             "the predicted class; green contour: lesion mask.</p>"]
    for k, name in enumerate(classes):
        mine = [o for o in overlays if o.get("true_index") == k]
        if not mine:
            continue
        parts.append(f"<h3>True class: {html.escape(str(name))}</h3>")
        for group in ("correct", "wrong"):
            sel = [o for o in mine if o["correct"] == (group == "correct")]
            for o in sel:
                cls = "ok" if o["correct"] else "bad"
                cap = (f"<span class='{cls}'>{group}</span> &middot; case "
                       f"{html.escape(str(o['case_id']))} &middot; predicted "
                       f"{html.escape(str(o['pred']))} (p={o['prob']:.2f}) &middot; "
                       f"slice {o['slice_index']} ({html.escape(o.get('slice_source', ''))})")
                parts.append(f"<div class='case'><div class='cap'>{cap}</div>"
                             f"{_overlay_figure(o)}</div>")
    return "\n".join(parts)


def _viewer_html(overlays: Sequence[dict[str, Any]]) -> str:
    from medmap.eval.viewer import viewer_cases, viewer_section

    cases = [{"case_id": o["case_id"], **o["volumes"],
              "caption": (f"{o['case_id']}: true {o['true']}, predicted {o['pred']} "
                          f"(p={o['prob']:.2f}, {'correct' if o['correct'] else 'wrong'})")}
             for o in viewer_cases(overlays)]
    return viewer_section(cases)


def baselines_section(m: dict[str, Any] | None, baselines: dict[str, Any] | None) -> str:
    """The deep model's accuracy / AUC beside chance and each baseline's (a name -> result
    mapping whose values hold ``metrics``, as :func:`medmap.baselines.radiomics.run_radiomics`
    returns; optional ``note``)."""
    if m is None:
        return "<p class='note'>No labelled case: nothing to compare.</p>"
    k = len(m["classes"])
    rows = [("this model", m, "")]
    rows += [(name, b.get("metrics") or {}, b.get("note", "")) for name, b in
             (baselines or {}).items()]
    body = "".join(
        f"<tr><td class='l'>{html.escape(n)}</td><td>{_fmt(r.get('accuracy'))}</td>"
        f"<td>{_ci((r.get('ci') or {}).get('accuracy'))}</td><td>{_fmt(r.get('auc'))}</td>"
        f"<td>{_ci((r.get('ci') or {}).get('auc'))}</td>"
        f"<td class='l'>{html.escape(note)}</td></tr>" for n, r, note in rows)
    body += (f"<tr><td class='l'>chance</td><td>{1 / k:.3f}</td><td>&ndash;</td><td>0.500</td>"
             "<td>&ndash;</td><td class='l'>uniform guess</td></tr>")
    return ("<table><tr><th class='l'>model</th><th>accuracy</th><th>95% CI</th><th>AUC</th>"
            f"<th>95% CI</th><th class='l'>note</th></tr>{body}</table>"
            "<p class='note'>Same split and cases; every CI a percentile bootstrap over cases. A "
            "deep model below the radiomics baseline has not learned what the images "
            "hold.</p>")


def render_report(result: dict[str, Any], *, labels, probs, fusion,
                  overlays: Sequence[dict[str, Any]] = (), title: str | None = None,
                  extra: Sequence[tuple[str, str]] = (), run_dir: str | Path | None = None,
                  baselines: dict[str, Any] | None = None) -> str:
    """The report as one HTML string.

    Args:
        result: :func:`medmap.eval.evaluate.evaluate`'s document: ``info`` (run summary),
            ``metrics`` (:func:`~medmap.metrics.full_metrics` or None), ``localisation``
            (:func:`~medmap.cam.aggregate_localisation` or None), ``classes``.
        labels: (N,) class indices, -1 for unlabelled cases; probs: (N, K); fusion: (N, d).
        overlays: CAM overlay records (``case_id``, ``true_index``, ``pred``, ``prob``,
            ``correct``, ``slice_index``, ``slice_source``, ``panels``: list of ``modality``,
            ``image``, ``cam``, ``mask`` 2D arrays).
        extra: further ``(heading, HTML)`` sections, after the classification ones (e.g. the
            vision-language section of :mod:`medmap.eval.language`).
        run_dir: the training run whose ``logs/metrics.csv`` gives the learning curves.
        baselines: results to show beside the model's (:func:`baselines_section`).
    """
    from medmap.eval.curves import curves_section

    classes = list(result["classes"])
    labels = np.asarray(labels).astype(int).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    fusion = np.asarray(fusion, dtype=np.float64)
    pred = probs.argmax(1) if probs.size else np.zeros(0, int)
    info = result.get("info", {})
    title = title or f"medmap evaluation: {info.get('split', '')}"
    m = result.get("metrics")
    body = [f"<h1>{html.escape(title)}</h1>", _meta_table(info)]
    body.append("<h2>Classification</h2>")
    if m is None:
        body.append("<p class='note'>No labelled case: classification metrics need labels.</p>")
    else:
        body.append(_metrics_section(m))
        figs = [f for f in (_roc_figure(m["roc"]),
                            _confusion_figure(m["confusion_matrix"], classes)) if f]
        body.append("<h3>ROC curves and confusion matrix</h3>"
                    f"<div class='figs'>{''.join(figs)}</div>")
    body.append("<h2>Beside its baselines</h2>")
    body.append(baselines_section(m, baselines))
    body.append("<h2>Learning curves</h2>")
    body.append(curves_section(run_dir, _img))
    body.append("<h2>Fused features</h2>")
    ts = _tsne_figure(fusion, labels, pred, classes) if fusion.ndim == 2 else None
    body.append(f"<div class='figs'>{ts}</div>" if ts else
                "<p class='note'>Too few cases for an embedding plot.</p>")
    for heading, section in extra:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(section)
    body.append("<h2>Localisation (Grad-CAM)</h2>")
    body.append(_localisation_section(result.get("localisation")))
    body.append("<h2>CAM viewer (3D)</h2>")
    body.append(_viewer_html(overlays))
    body.append("<h2>CAM overlays</h2>")
    body.append(_overlay_section(overlays, classes))
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")


def write_report(path: str | Path, result: dict[str, Any], **kwargs: Any) -> Path:
    """:func:`render_report` written to ``path`` (UTF-8); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_report(result, **kwargs), encoding="utf-8")
    return p
