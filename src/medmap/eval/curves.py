"""Learning curves of a training run, read from its ``logs/metrics.csv``.

Every training stage logs its terms as epoch means (``train/<term>``: each loss term, its
weight such as MedMAP's ``lambda_c`` / ``lambda_s``, train accuracy) beside the validation
metrics (``val/...``); :func:`read_curves` turns the CSV into one series per metric over
epochs, and :func:`curves_figure` draws them (the evaluation report's "Learning curves").

Example:
    >>> curves = read_curves("runs/finetune")                    # doctest: +SKIP
    >>> curves["val/acc"][-1], curves["train/acc"][-1]           # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

__all__ = ["read_curves", "curves_figure", "curves_section"]

# panels of the figure: (title, metric names, y label); metrics absent from a run are skipped
PANELS = (
    ("Accuracy", ("train/acc", "val/acc", "val/auc", "val/balanced_acc"), "value"),
    ("Loss terms", ("train/cls_loss", "train/kl_loss", "train/contrastive_loss",
                    "train/case_loss", "val/contrastive_loss"), "loss"),
    ("Loss weights", ("train/lambda_c", "train/lambda_s"), "weight"),
    ("Retrieval", ("val/retrieval_r5", "val/retrieval_top1"), "recall"),
)


def read_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(epoch, value), ...]}`` from ``RUN/logs/metrics.csv`` (one value per epoch:
    the mean of the rows logged in that epoch); ``{}`` when the run has no log."""
    path = Path(run_dir) / "logs" / "metrics.csv"
    if not path.is_file():
        return {}
    sums: dict[str, dict[int, list[float]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(float(row.get("epoch") or ""))
            except ValueError:
                continue
            for k, v in row.items():
                if k in ("epoch", "step") or not v or not k.startswith(("train/", "val/")):
                    continue
                try:
                    x = float(v)
                except ValueError:
                    continue
                if math.isfinite(x):
                    sums.setdefault(k, {}).setdefault(epoch, []).append(x)
    return {k: [(e, sum(v) / len(v)) for e, v in sorted(d.items())] for k, d in sums.items()}


def curves_figure(curves: dict[str, list[tuple[int, float]]]):
    """A matplotlib figure (Agg canvas) with one panel per group of :data:`PANELS` that the run
    logged; None when it logged none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(t, [k for k in keys if k in curves], y) for t, keys, y in PANELS]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.2), dpi=90)
    FigureCanvasAgg(fig)
    for i, (title, keys, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for k in keys:
            e, v = zip(*curves[k])
            ax.plot(e, v, marker="o", ms=3, lw=1.4, ls="--" if k.startswith("val/") else "-",
                    label=k)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if title == "Loss weights":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def curves_section(run_dir: str | Path | None, img) -> str:
    """HTML of the report's learning-curve section; ``img(fig, alt)`` embeds a figure."""
    import html

    curves = read_curves(run_dir) if run_dir is not None else {}
    fig = curves_figure(curves) if curves else None
    if fig is None:
        return ("<p class='note'>No training log next to this model (logs/metrics.csv of its "
                "run folder): no learning curves.</p>")
    last: dict[str, Any] = {k: v[-1][1] for k, v in curves.items()}
    best = max(curves.get("val/acc", [(0, float("nan"))]), key=lambda t: t[1])
    note = (f"Solid: training (epoch means); dashed: validation. {len(curves.get('val/acc', []))} "
            f"validation epochs" + (f"; best validation accuracy {best[1]:.3f} at epoch "
                                    f"{best[0]}" if "val/acc" in curves else "")
            + (f"; last train accuracy {last['train/acc']:.3f}" if "train/acc" in last else "")
            + f". Source: {html.escape(str(Path(run_dir) / 'logs' / 'metrics.csv'))}.")
    return f"<div class='figs'>{img(fig, 'learning curves')}</div><p class='note'>{note}</p>"
