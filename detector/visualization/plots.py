"""Plots of results with matplotlib (``matplotlib.figure.Figure`` with the Agg canvas: no pyplot
state, no display needed): precision-recall curves per class, and training curves.

Figures are rendered to PNG bytes in memory and written atomically (``detector.core.io``).
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detector.core.io import write_bytes_atomic


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> None:
    """Render ``figure`` to PNG and write it atomically."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes_atomic(path, buffer.getvalue())


def _grid(count: int, max_columns: int = 5) -> tuple[int, int]:
    """Rows and columns of a near-square panel grid for ``count`` panels (20 VOC classes: 4 x 5)."""
    columns = max(1, min(max_columns, math.ceil(math.sqrt(count))))
    return max(1, math.ceil(count / columns)), columns


def plot_pr_curves(curves: Mapping, path: str | Path, title: str = "") -> None:
    """One panel per class of ``voc_eval.pr_curves``' dict: precision against recall, AP in the title."""
    classes = curves["classes"]
    rows, columns = _grid(len(classes))
    figure = Figure(figsize=(3.0 * columns, 2.8 * rows), layout="constrained")
    defined = [c["ap"] for c in classes.values() if c["ap"] is not None]
    mean = f"mAP {100 * sum(defined) / len(defined):.1f}" if defined else "mAP n/a"
    figure.suptitle(f"{title + ': ' if title else ''}precision-recall ({curves['metric']}), {mean}")
    for index, (name, curve) in enumerate(classes.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        if curve["recall"]:
            axes.plot([0.0, *curve["recall"]], [curve["precision"][0], *curve["precision"]], drawstyle="steps-post")
        ap = "n/a" if curve["ap"] is None else f"{100 * curve['ap']:.1f}"
        axes.set_title(f"{name}: AP {ap}", fontsize=10)
        axes.set_xlim(0, 1.0)
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
        axes.set_xlabel("recall", fontsize=8)
        axes.set_ylabel("precision", fontsize=8)
        axes.tick_params(labelsize=7)
    save_figure(figure, path)


def plot_training_curves(history: Sequence[Mapping], path: str | Path) -> None:
    """Fine-tuning loss, foreground accuracy and lr against iteration, and the SVM negative cache
    sizes and retrain seconds per retrain, from ``history.jsonl``'s rows."""
    tune = [row for row in history if row.get("stage") == "finetune"]
    svm = [row for row in history if row.get("stage") == "svm"]
    figure = Figure(figsize=(12, 6.5), layout="constrained")
    panels = [figure.add_subplot(2, 3, i + 1) for i in range(6)]
    for axes, key, label in zip(panels[:3], ("loss", "fg_accuracy", "lr"),
                                ("loss", "foreground accuracy", "learning rate")):
        axes.plot([r["iteration"] for r in tune], [r[key] for r in tune], marker="." if len(tune) < 30 else None)
        axes.set_title(f"fine-tuning: {label}", fontsize=10)
        axes.set_xlabel("iteration")
        axes.grid(alpha=0.3)
    if any(r["lr"] > 0 for r in tune):
        panels[2].set_yscale("log")
    for label in sorted({r["class"] for r in svm}):
        rows = [r for r in svm if r["class"] == label]
        name = rows[0].get("class_name", str(label))
        panels[3].plot(range(1, len(rows) + 1), [r["negatives"] for r in rows], marker=".", label=name)
        panels[4].plot(range(1, len(rows) + 1), [r["seconds"] for r in rows], marker=".", label=name)
    for axes, title in zip(panels[3:5], ("SVM: cached hard negatives after retrain", "SVM: retrain seconds")):
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("retrain of the class")
        retrains = max([sum(r["class"] == c for r in svm) for c in {r["class"] for r in svm}] or [1])
        axes.set_xticks(range(1, retrains + 1, max(1, retrains // 8)))
        axes.set_xlim(0.5, retrains + 0.5)
        axes.grid(alpha=0.3)
    if svm:
        panels[3].legend(fontsize=7, ncol=2)
    panels[5].axis("off")
    last = {r["class_name"]: r for r in svm if "class_name" in r}
    lines = [f"{len(tune)} fine-tuning records, {len(svm)} SVM retrains", "after the last retrain:"]
    lines += [f"  {name}: {r['positives']} positives, {r['negatives']} negatives" for name, r in sorted(last.items())]
    panels[5].text(0, 1, "\n".join(lines[:24]), fontsize=9, va="top", family="monospace")
    save_figure(figure, path)
