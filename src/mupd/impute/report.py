"""Spatial maps (predicted next to measured, per chosen gene) as a PNG and an HTML report with the
per-gene correlations of the shown section."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np

from ..errors import require
from .evaluate import gene_metrics


def spatial_maps(path: str | os.PathLike, coords: np.ndarray, predicted: np.ndarray, genes, show, *,
                 measured: np.ndarray | None = None, title: str = "") -> Path:
    """One row per gene: predicted (and measured) log1p-CPM at each spot, shared colour scale per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {g: k for k, g in enumerate(genes)}
    missing = [g for g in show if g not in index]
    require(not missing, f"genes {missing} are not in the model's panel; choose among e.g. {list(genes)[:8]}")
    cols = 2 if measured is not None else 1
    x, y = coords[:, 0], coords[:, 1]
    aspect = float(np.ptp(y) + 1) / float(np.ptp(x) + 1)  # rows as tall as the tissue, not a fixed square
    fig, axes = plt.subplots(len(show), cols, figsize=(3.6 * cols + 1, (3.6 * aspect + 0.5) * len(show)), squeeze=False)
    for row, gene in enumerate(show):
        k = index[gene]
        panels = [("predicted", predicted[:, k])] + ([("measured", measured[:, k])] if measured is not None else [])
        lo = min(float(v.min()) for _, v in panels)
        hi = max(float(v.max()) for _, v in panels)
        for col, (name, values) in enumerate(panels):
            ax = axes[row, col]
            dots = ax.scatter(x, y, c=values, s=28, cmap="viridis", vmin=lo, vmax=hi + 1e-9)
            ax.set_title(f"{gene} {name}", fontsize=9)
            ax.set_aspect("equal")
            ax.invert_yaxis()  # image coordinates: y grows downwards
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(dots, ax=axes[row].tolist(), shrink=0.8, label="log1p CPM")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def html_report(path: str | os.PathLike, png: Path, *, model_info: dict, predicted: np.ndarray, genes,
                measured: np.ndarray | None = None, n_top: int = 15) -> Path:
    """A self-contained HTML page: the model, the maps, and per-gene r on this section when measured."""
    image = base64.b64encode(Path(png).read_bytes()).decode()
    rows = ""
    summary = "no measured expression given: no correlations"
    if measured is not None and len(predicted) >= 2:
        m = gene_metrics(measured, predicted)
        order = np.argsort(-m["pearson"])[:n_top]
        rows = "".join(f"<tr><td>{html.escape(str(genes[k]))}</td><td>{m['pearson'][k]:.3f}</td>"
                       f"<td>{m['spearman'][k]:.3f}</td><td>{m['mse'][k]:.3f}</td></tr>" for k in order)
        summary = (f"{len(genes)} genes: mean Pearson {m['pearson'].mean():.3f}, fraction r &gt; 0 "
                   f"{(m['pearson'] > 0).mean():.2f} (one section; see the protocol JSON for fold-level figures)")
    info = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))[:300]}</td></tr>" for k, v in model_info.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mupd impute report</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:left}}</style></head><body>
<h1>mupd impute: predicted vs measured</h1><p>{summary}</p>
<img src="data:image/png;base64,{image}" alt="spatial maps">
<h2>Best predicted genes</h2><table><tr><th>gene</th><th>Pearson</th><th>Spearman</th><th>MSE</th></tr>{rows}</table>
<h2>Model</h2><table>{info}</table></body></html>"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
