"""``report.html`` for ``mupd demo``: the sample grid, the loss curve and the metrics, one page,
self-contained (images embedded as base64), readable without a server."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def loss_plot(curve: list[dict]) -> str | None:
    """The training loss against images seen, as an embedded PNG (None without points)."""
    if len(curve) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([p["images"] for p in curve], [p["loss"] for p in curve], lw=1.2)
    ax.set_xlabel("images seen")
    ax.set_ylabel("flow-matching loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(estimate) -> str:
    if isinstance(estimate, dict) and "value" in estimate:
        low, high = estimate.get("low"), estimate.get("high")
        ci = f" (95% CI {low:.4g} to {high:.4g})" if low is not None and high is not None else ""
        return f"{estimate['value']:.4g}{ci}"
    return html.escape(str(estimate))


def write_report(out: Path, metrics: dict) -> Path:
    out = Path(out)
    gen, ae, ev = metrics["generator"], metrics["autoencoder"], metrics["evaluation"]
    extractor = ev["feature_extractor"]
    warning = f"<p class='warn'>{html.escape(extractor['warning'])}</p>" if extractor.get("warning") else ""
    plot = loss_plot(gen["loss_curve"])
    rec = ev["class_recognition"]
    recon = ae["held_out_reconstruction"]
    ae_text = (f"{ae['which']}; latents {'x'.join(map(str, ae['latent_shape']))}; held-out PSNR {recon['psnr']:.2f} dB, "
               f"SSIM {recon['ssim']:.3f}")
    rows = [
        ("data", metrics["data"]["source"]),
        ("training patches / held-out", f"{metrics['data']['train_patches']} / {metrics['data']['held_out_patches']} at {metrics['data']['image_size']} px"),
        ("autoencoder", ae_text),
        ("generator", f"{gen['model']['parameters']:,} parameters, {gen['images_seen']} images seen in {gen['seconds']} s ({gen['images_per_s']} img/s)"),
        ("loss (first / last 10 % of steps)", f"{gen['loss_first_10pct']:.4f} / {gen['loss_last_10pct']:.4f}"),
        ("sampler", json.dumps(gen["sampler"])),
        ("requested class recognised (generated)", _fmt(rec["generated"])),
        ("classifier accuracy on held-out real", _fmt(rec["held_out_real"])),
        ("feature space", extractor.get("note") or extractor["name"]),
        ("FID generated vs held-out real", _fmt(ev["generated_vs_real"]["fid"])),
        ("FID autoencoder reconstructions vs real (floor)", _fmt(ev["autoencoder_reconstructions_vs_real"]["fid"])),
        ("KID generated vs held-out real", _fmt(ev["generated_vs_real"]["kid"])),
        ("settings", json.dumps(metrics["settings"])),
        ("total time", f"{metrics['total_seconds']} s (evaluation {metrics.get('evaluation_seconds', '?')} s)"),
    ]
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v)) if not str(v).startswith('<') else v}</td></tr>" for k, v in rows)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mupd demo report</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}} th{{text-align:left;padding-right:1em;vertical-align:top}}
td,th{{border-bottom:1px solid #ddd;padding:4px}} .warn{{color:#a40}} img{{max-width:100%;image-rendering:pixelated}}</style></head>
<body><h1>mupd demo</h1>
<p>A small MuPD (flow matching, decoupled cross-attention on a hashed-words caption stream) trained on the CPU
for a few minutes in the latent space of {html.escape(ae['which'])}. The autoencoder's reconstructions
show what this latent space can render (sharp nuclei with TAEF2); a few CPU minutes of generator training give
H&amp;E colours, white space and dense dark cell clusters but not yet well-formed nuclei: in our runs those need far
more training than a CPU gives in minutes (GPU scale; the README's demo section has the measurements).</p>
<p><b>{html.escape(ev.get('summary', ''))}</b></p>
<h2>Samples</h2><img src="{_png_data(out / 'samples.png')}" alt="real and generated patches per class">
<h2>Training loss</h2>{f'<img src="{plot}" alt="loss curve">' if plot else '<p>(too few log points)</p>'}
<h2>Numbers</h2>{warning}<table>{table}</table>
<p>Full numbers: <code>metrics.json</code>; the trained pipeline: <code>checkpoint/</code>.</p>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
