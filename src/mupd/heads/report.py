"""``report.html`` for a heads run: metrics with their intervals and the plots that show them —
Kaplan–Meier curves of the predicted risk groups (log-rank p), ROC curves, a confusion matrix and
attention heat maps over a bag's tiles. Plain HTML + PNGs next to it (no scripts, works offline).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_text
from ..metrics.report import _figure, _save


def km_plot(pred, path: Path, title: str = "") -> str:
    """KM curves of the high- and low-risk halves (first seed, every patient once, out-of-fold)."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    first = pred[pred["seed"] == pred["seed"].min()]
    fig, ax = _figure(figsize=(5.5, 4))
    groups = [("low risk", first[first["high_risk"] == 0], "#3b7dd8"), ("high risk", first[first["high_risk"] == 1], "#d8523b")]
    for name, rows, colour in groups:
        if len(rows):
            KaplanMeierFitter(label=f"{name} (n={len(rows)})").fit(rows["time"], rows["event"]).plot_survival_function(
                ax=ax, color=colour, ci_show=True)
    (_, lo, _), (_, hi, _) = groups
    if len(lo) and len(hi):
        p = logrank_test(hi["time"], lo["time"], hi["event"], lo["event"]).p_value
        ax.text(0.98, 0.95, f"log-rank p = {p:.2g}", transform=ax.transAxes, ha="right", va="top")
    ax.set_xlabel("months")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "Kaplan-Meier by predicted risk (out-of-fold)", fontsize=10)
    return _save(fig, path)


def fold_plot(per_fold: list[dict], metric: str, path: Path) -> str:
    folds = sorted({r["fold"] for r in per_fold})
    values = [np.nanmean([r[metric] for r in per_fold if r["fold"] == f]) for f in folds]
    fig, ax = _figure(figsize=(4.5, 3.2))
    ax.bar([str(f) for f in folds], values, color="#6a8caf")
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.axhline(float(np.mean(values)), color="black", lw=1, label=f"mean {np.mean(values):.3f}")
    ax.set_ylim(min(0.3, min(values) - 0.05), 1.0)
    ax.set_xlabel("test fold")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def roc_plot(pred, class_names: list[str], path: Path) -> str:
    from sklearn.metrics import roc_curve

    first = pred[pred["seed"] == pred["seed"].min()]
    fig, ax = _figure(figsize=(4.8, 4.2))
    classes = [1] if len(class_names) == 2 else range(len(class_names))
    for k in classes:
        y = (first["label"] == k).to_numpy()
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, first[f"prob_{k}"])
        ax.plot(fpr, tpr, lw=1.5, label=class_names[k] + ("" if len(class_names) > 2 else " vs " + class_names[0]))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("ROC (out-of-fold, one vs rest)", fontsize=10)
    return _save(fig, path)


def confusion_plot(matrix, class_names: list[str], path: Path) -> str:
    matrix = np.asarray(matrix)
    fig, ax = _figure(figsize=(1.0 + 0.6 * len(class_names), 0.8 + 0.6 * len(class_names)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _save(fig, path)


def attention_plot(tiles: np.ndarray, attention: np.ndarray, path: Path, title: str = "", marked=None) -> str:
    """A bag's tiles (N, H, W, 3) uint8 in a grid, each outlined by its attention weight (inferno:
    dark = low, yellow = high); ``marked`` (N,) bool tiles get a "*" (e.g. the truly positive ones)."""
    import matplotlib

    n = len(tiles)
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = _figure(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.4), squeeze=False)
    weight = attention / max(float(attention.max()), 1e-12)
    cmap = matplotlib.colormaps["inferno"]
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(tiles[i])
        colour = cmap(weight[i])
        ax.add_patch(matplotlib.patches.Rectangle((0, 0), tiles[i].shape[1] - 1, tiles[i].shape[0] - 1, fill=False,
                                                  edgecolor=colour, lw=2 + 4 * weight[i]))
        star = " *" if marked is not None and marked[i] else ""
        ax.set_title(f"{attention[i]:.2f}{star}", fontsize=7, color="black" if weight[i] > 0.5 else "grey")
    fig.suptitle(title or "attention over the bag's tiles (ABMIL)", fontsize=9)
    return _save(fig, path)


def _interval_text(e: dict) -> str:
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]" if e and e.get("n") else "n/a"


def write_report(out: Path, summary: dict, images: list[tuple[str, str]]) -> Path:
    """``summary`` is the run's metrics.json content; ``images`` (caption, png name) pairs."""
    rows = []
    metrics = summary.get("metrics", {})
    for name, value in metrics.items():
        if isinstance(value, dict) and "value" in value:
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{_interval_text(value)}</td>"
                        f"<td>{value.get('std', float('nan')):.3f}</td><td>{value.get('n', '')}</td></tr>")
    extra = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    figures = "\n".join(f'<figure><img src="{html.escape(png)}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}'
                        "</figcaption></figure>" for cap, png in images)
    config = html.escape(json.dumps(summary.get("config", {}), indent=1, default=str))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mupd heads: {html.escape(summary.get('title', ''))}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}figure{{display:inline-block;margin:8px}}img{{max-width:480px}}</style></head><body>
<h1>{html.escape(summary.get('title', 'heads run'))}</h1>
<p>{html.escape(summary.get('protocol', ''))}</p>
<table><tr><th>metric</th><th>mean [95% CI]</th><th>std over folds</th><th>folds</th></tr>{''.join(rows)}</table>
<p>{html.escape(', '.join(f'{k} = {v:.3g}' if isinstance(v, float) else f'{k} = {v}' for k, v in extra.items()))}</p>
{figures}
<h2>configuration</h2><pre>{config}</pre></body></html>"""
    path = Path(out) / "report.html"
    atomic_write_text(path, page)
    return path
