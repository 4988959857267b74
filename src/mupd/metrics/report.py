"""``report.html``: the metrics with their intervals, plots and real/generated image grids.

Self-contained and offline: plain HTML + CSS, PNG files written next to it (no scripts, no CDN).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_text

GRID_IMAGES = 32


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def image_grid(images, path: Path, columns: int = 8, min_tile: int = 128) -> str:
    """A PNG mosaic of up to ``GRID_IMAGES`` uint8 (N,3,H,W) images; small tiles are enlarged
    (nearest neighbour) to at least ``min_tile`` px so nuclei outlines stay visible."""
    from PIL import Image

    array = np.asarray(images[:GRID_IMAGES]).transpose(0, 2, 3, 1)
    n, h, w, _ = array.shape
    rows = (n + columns - 1) // columns
    canvas = np.full((rows * (h + 2), min(n, columns) * (w + 2), 3), 255, np.uint8)
    for i, tile in enumerate(array):
        r, c = divmod(i, columns)
        canvas[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = tile
    grid = Image.fromarray(canvas)
    scale = max(1, -(-min_tile // max(h, w)))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    grid.save(path)
    return path.name


def _estimate_plot(result: dict, path: Path) -> str | None:
    panels = []
    for name in ("fid", "kid"):
        if name in result:
            panels.append((name.upper(), [(name.upper(), result[name])]))
    if "prdc" in result:
        panels.append(("precision / recall / density / coverage",
                       [(k, result["prdc"][k]) for k in ("precision", "recall", "density", "coverage")]))
    if not panels:
        return None
    fig, axes = _figure(1, len(panels), figsize=(3.2 * len(panels) + 1, 3.2), squeeze=False)
    for ax, (title, items) in zip(axes[0], panels):
        values = [e["value"] for _, e in items]
        err = np.array([[e["value"] - e["low"], e["high"] - e["value"]] for _, e in items]).T
        ax.bar(range(len(items)), values, yerr=np.clip(err, 0, None), capsize=4, color="#6a8caf")
        ax.set_xticks(range(len(items)), [n for n, _ in items], rotation=20)
        ax.set_title(title)
    fig.suptitle(f"95% bootstrap CIs ({result['bootstrap']['resamples']} resamples)", fontsize=9)
    return _save(fig, path)


def _pca_plot(real: np.ndarray, fake: np.ndarray, path: Path) -> str:
    both = np.concatenate([real, fake])
    mean = both.mean(0)
    _, _, vt = np.linalg.svd(both - mean, full_matrices=False)
    r2, f2 = (real - mean) @ vt[:2].T, (fake - mean) @ vt[:2].T
    fig, ax = _figure(figsize=(4.5, 4))
    ax.scatter(r2[:, 0], r2[:, 1], s=6, alpha=0.5, label=f"real ({len(real)})")
    ax.scatter(f2[:, 0], f2[:, 1], s=6, alpha=0.5, label=f"generated ({len(fake)})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8)
    ax.set_title("feature space (PCA of both sets)", fontsize=10)
    return _save(fig, path)


def _cells_plot(real, fake, cells: dict, path: Path) -> str:
    from .cells import FEATURES

    fig, axes = _figure(2, 4, figsize=(13, 5.5))
    axes = axes.ravel()
    for i, name in enumerate(FEATURES[:6]):
        ax = axes[i]
        lo, hi = np.percentile(np.concatenate([real.features[:, i], fake.features[:, i]]), [1, 99]) if len(real.features) and len(fake.features) else (0, 1)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        ax.hist(real.features[:, i], bins=bins, density=True, alpha=0.5, label="real")
        ax.hist(fake.features[:, i], bins=bins, density=True, alpha=0.5, label="generated")
        ax.set_title(name, fontsize=9)
    axes[0].legend(fontsize=8)
    counts_r, counts_f = real.counts(), fake.counts()
    bins = np.arange(0, max(counts_r.max(initial=0), counts_f.max(initial=0)) + 2) - 0.5
    axes[6].hist(counts_r, bins=bins, alpha=0.5, density=True)
    axes[6].hist(counts_f, bins=bins, alpha=0.5, density=True)
    axes[6].set_title("nuclei per tile", fontsize=9)
    types = cells["cell_types"]
    k = len(types["real_proportions"])
    axes[7].bar(np.arange(k) - 0.2, types["real_proportions"], width=0.4, label="real")
    axes[7].bar(np.arange(k) + 0.2, types["generated_proportions"], width=0.4, label="generated")
    axes[7].set_title(f"cell types (TV {types['total_variation']:.3f})", fontsize=9)
    axes[7].set_xticks(range(k), [f"type {j}" for j in range(k)], fontsize=8)
    return _save(fig, path)


def _fewshot_plot(fewshot: dict, path: Path) -> str:
    fig, ax = _figure(figsize=(4.5, 3.5))
    shots = [int(s) for s in fewshot["results"]]
    for arm in ("real", "real+synthetic"):
        rows = [fewshot["results"][str(s)].get(arm) for s in shots]
        if not all(rows):
            continue
        v = np.array([r["balanced_accuracy"]["value"] for r in rows])
        lo = np.array([r["balanced_accuracy"]["low"] for r in rows])
        hi = np.array([r["balanced_accuracy"]["high"] for r in rows])
        ax.errorbar(shots, v, yerr=[v - lo, hi - v], marker="o", capsize=4, label=arm)
    ax.set_xscale("log")
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("balanced accuracy")
    ax.set_title(f"few-shot linear probe ({fewshot['seeds']} seeds, 95% CI)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _nuclei_overlay(images, path: Path, diameter: float, n: int = 8) -> str:
    from skimage.segmentation import find_boundaries

    from .cells import NucleusSegmenter, segment_nuclei

    tiles = np.asarray(images[:n]).copy()
    for tile in tiles:
        hwc = tile.transpose(1, 2, 0)
        edge = find_boundaries(segment_nuclei(hwc, NucleusSegmenter(nucleus_diameter=diameter)))
        hwc[edge] = (0, 255, 0)
        tile[:] = hwc.transpose(2, 0, 1)
    return image_grid(tiles, path)


def _fmt(e) -> str:
    if isinstance(e, dict) and "value" in e:
        return f"{e['value']:.4g} <span class=ci>[{e['low']:.4g}, {e['high']:.4g}]</span>"
    return html.escape(json.dumps(e, default=str)) if not isinstance(e, (int, float, str)) else html.escape(str(e))


def _summary_rows(result: dict) -> list[tuple[str, str]]:
    rows = []
    for name in ("fid", "kid"):
        if name in result:
            rows.append((name.upper(), _fmt(result[name])))
    for key in ("precision", "recall", "density", "coverage"):
        if "prdc" in result:
            rows.append((key, _fmt(result["prdc"][key])))
    if "cells" in result:
        c = result["cells"]
        rows += [("nuclei per tile (real)", _fmt(c["nuclei_per_tile"]["real"])),
                 ("nuclei per tile (generated)", _fmt(c["nuclei_per_tile"]["generated"])),
                 ("nucleus-feature Wasserstein (ot.emd2)", _fmt(c["feature_wasserstein_emd"])),
                 ("cell-type total variation", _fmt(c["cell_types"]["total_variation"]))]
    if "retrieval" in result:
        for k, v in result["retrieval"]["generated_to_real"].items():
            if k.startswith("recall@"):
                rows.append((f"generated→real {k}", _fmt(v)))
    if "similarity" in result:
        rows.append(("cosine to reference", _fmt(result["similarity"]["cosine"])))
    return rows


def write_report(out: Path, result: dict, real_set=None, fake_set=None, cells_data=None) -> Path:
    """Write ``out/report.html`` and its PNGs; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    if (name := _estimate_plot(result, out / "metrics.png")) is not None:
        figures.append(("Metrics with 95% bootstrap intervals", name))
    if real_set is not None and fake_set is not None and real_set.features.shape[1] > 1 and len(real_set.features) > 2:
        figures.append(("Feature space", _pca_plot(real_set.features, fake_set.features, out / "features_pca.png")))
    if cells_data is not None and "cells" in result:
        figures.append(("Nuclei: morphology, colour, counts, cell types", _cells_plot(*cells_data, result["cells"], out / "cells.png")))
    if "fewshot" in result and result["fewshot"]["results"]:
        figures.append(("Few-shot utility", _fewshot_plot(result["fewshot"], out / "fewshot.png")))
    grids = []
    for label, s in (("real", real_set), ("generated", fake_set)):
        if s is not None and s.images is not None:
            grids.append((f"{label} images (first {min(GRID_IMAGES, len(s.images))} of {len(s.images)})", image_grid(s.images.images, out / f"grid_{label}.png")))
            if "cells" in result:
                grids.append((f"{label}: segmented nuclei", _nuclei_overlay(s.images.images, out / f"nuclei_{label}.png",
                                                                                result["cells"].get("nucleus_diameter_px", 10.0))))
    fx = result.get("feature_extractor", {})
    warnings = "".join(f"<p class=warn>⚠ {html.escape(w)}</p>" for w in result.get("warnings", []))
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in _summary_rows(result))
    sampler = result.get("sampler", {})
    sampler_rows = "".join(f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(json.dumps(v, default=str)[:300])}</code></td></tr>"
                           for k, v in sampler.get("keys", {}).items()) or "<tr><td colspan=2>no mupd:* PNG metadata in the generated images</td></tr>"
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>mupd evaluation</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} .ci{{color:#666}} .warn{{background:#fff3cd;padding:8px}}
img{{max-width:100%;border:1px solid #ddd}} figure{{margin:1em 0}}</style></head><body>
<h1>mupd evaluation</h1>
<p>real: <code>{html.escape(result['real']['source'])}</code> ({result['real']['n']} images) &nbsp;
generated: <code>{html.escape(result['fake']['source'])}</code> ({result['fake']['n']} images)</p>
{warnings}
<h2>Summary</h2><table><tr><th>metric</th><th>value [95% CI]</th></tr>{rows}</table>
<p>Intervals: {result['bootstrap']['resamples']} bootstrap resamples over {html.escape(result['bootstrap']['over'])}.</p>
<h2>Feature extractor</h2><p><b>{html.escape(str(fx.get('name', 'none')))}</b> — preprocessing:
<code>{html.escape(json.dumps(fx.get('preprocessing', {})))}</code>; images: <code>{html.escape(json.dumps(fx.get('image_preprocessing', {})))}</code></p>
<h2>Sampler settings (from PNG metadata)</h2><p>{sampler.get('images_with_metadata', 0)} of {sampler.get('images', 0)} generated images carry metadata.</p>
<table>{sampler_rows}</table>
{''.join(f'<figure><h2>{html.escape(t)}</h2><img src="{n}" alt="{html.escape(t)}"></figure>' for t, n in figures)}
<h2>Images</h2>{''.join(f'<figure><figcaption>{html.escape(t)}</figcaption><img src="{n}" alt="{html.escape(t)}"></figure>' for t, n in grids)}
<p><small>metrics.json holds every value; {result.get('seconds', '?')} s.</small></p></body></html>"""
    path = out / "report.html"
    atomic_write_text(path, body)
    return path
