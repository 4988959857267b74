"""Samples, measurements and the report of the her2st recipe (``mupd demo --dataset her2st`` and
``benchmarks/multimodal_her2st.py``), all on held-out spots.

* ``generate``: one sample per spot from its RNA, its caption, both or nothing (same noise per spot
  across modes, so a grid row differs only by the condition);
* ``Readout``: ridge from image features to pathway scores, fitted on *real* training crops, that
  asks whether a sample carries the expression it was generated from (matched vs shuffled RNA);
* ``distribution``: FID/KID to the real crops of the same spots; ``cells``: nucleus statistics.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import torch

MODES = ("rna", "text", "both", "none")
MODE_LABELS = {"real": "real crop (C5)", "rna": "RNA alone", "text": "text alone", "both": "RNA + text", "none": "no condition"}
# Inception-v3 (random init: no weights offline) costs ~1 s per 64 px crop on a loaded 2-core CPU;
# FID/KID here use the 30 colour/stain statistics instead (labelled as such in every output)
FID_EXTRACTOR = "colour-stats"
NUCLEUS_DIAMETER_PX = 5.0  # ~8 um at 1.56 um/px (128 px of 0.78 um/px resized to 64)


def conditions_for(trainer, data, rows: np.ndarray, mode: str, rna_rows: np.ndarray | None = None) -> dict:
    """Model conditions for ``rows``: RNA of ``rna_rows`` (default the same spots), captions, both, none."""
    cond = {}
    if mode in ("rna", "both") and "rna" in trainer.encoders:
        source = rows if rna_rows is None else rna_rows
        with torch.no_grad():
            cond["rna"] = trainer.inference_encoders()["rna"].encode(torch.from_numpy(data.rna[source]))  # EMA, as the model
    if mode in ("text", "both") and "text" in trainer.encoders:
        cond["text"] = trainer._encode_captions(trainer.encoders["text"], [data.captions[i] for i in rows])
    return cond


def generate(trainer, data, rows: np.ndarray, mode: str, *, steps: int, seed: int, guidance: float = 2.0,
             batch: int = 64, rna_rows: np.ndarray | None = None) -> np.ndarray:
    """uint8 (n, H, W, 3): one sample per spot; noise depends on (seed, position) only."""
    from .preview import sample_images

    out = []
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        cond = conditions_for(trainer, data, part, mode, None if rna_rows is None else rna_rows[start:start + batch])
        out.append(sample_images(trainer.ema.module, trainer.vae, cond, len(part), trainer.latent_shape, method="heun",
                                 steps=steps, guidance=guidance if cond else None, seed=seed * 100_003 + start))
    return np.concatenate(out)


def to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


# --- the expression read-out -------------------------------------------------------------------
class Readout:
    """Ridge (on standardised colour/stain statistics + the autoencoder's pooled latents) from a crop
    to its spot's pathway scores, fitted on real training crops. It keeps the 20 pathways that a
    fit without the last training section predicts best on that section."""

    def __init__(self, vae, top_k: int = 20, alpha: float = 10.0):
        self.vae, self.top_k, self.alpha = vae, top_k, alpha

    @torch.no_grad()
    def features(self, images: torch.Tensor, latents: torch.Tensor | None = None) -> np.ndarray:
        """``latents``: the images' (standardised) latents when already computed."""
        from ..metrics.features import _colour_stats

        colour = _colour_stats(images).numpy()
        z = latents if latents is not None else torch.cat(
            [self.vae.encode(images[s:s + 64].float() / 127.5 - 1.0) for s in range(0, len(images), 64)])
        return np.concatenate([colour, z.mean((2, 3)).numpy(), z.std((2, 3)).numpy()], axis=1)

    def fit(self, data, latents: torch.Tensor | None = None) -> "Readout":
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rows = np.where(data.train)[0]
        x = self.features(data.pixels[rows], None if latents is None else latents[rows])
        y = data.pathway_scores[rows]
        sections = np.asarray(data.sections)[rows]
        inner = sections != sections[-1]
        if inner.all() or not inner.any():  # one training section: validate on every other spot
            inner = np.arange(len(rows)) % 2 == 0
        probe = make_pipeline(StandardScaler(), Ridge(alpha=self.alpha)).fit(x[inner], y[inner])
        r = pearson_columns(probe.predict(x[~inner]), y[~inner])
        order = np.argsort(-r)[: self.top_k]
        self.targets = np.asarray(order, dtype=int)
        self.validation_r = r[self.targets]
        self.names = [data.scorer.names[k] for k in self.targets]
        self.model = make_pipeline(StandardScaler(), Ridge(alpha=self.alpha)).fit(x, y[:, self.targets])
        return self

    def predict(self, images, latents: torch.Tensor | None = None) -> np.ndarray:
        images = images if torch.is_tensor(images) else to_nchw(images)
        return self.model.predict(self.features(images, latents))

    def describe(self) -> dict:
        return {"model": f"ridge (alpha {self.alpha}) on 30 colour/stain statistics + autoencoder latent channel mean/std",
                "fitted_on": "real crops of the training sections", "targets": self.names,
                "validation_pearson_mean": float(np.mean(self.validation_r)) if len(self.targets) else None,
                "selection": f"the {len(self.targets)} pathways best predicted on the last training section held out"}


def pearson_columns(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-column Pearson r between two (n, k) arrays (0 for a constant column)."""
    a, b = pred - pred.mean(0), true - true.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def readout_agreement(pred: np.ndarray, true: np.ndarray, *, seed: int = 0, n_resamples: int = 500) -> dict:
    """Mean over pathways of Pearson(read-out of sample, score of the RNA that conditioned it), with a
    spot bootstrap; ``shuffled``: the same against a permutation of the RNA (chance level)."""
    from ..metrics.bootstrap import bootstrap_indices_ci

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(true))
    matched = bootstrap_indices_ci(lambda i: pearson_columns(pred[i], true[i]).mean(), [len(true)], n_resamples=n_resamples, seed=seed)
    shuffled = bootstrap_indices_ci(lambda i: pearson_columns(pred[i], true[perm][i]).mean(), [len(true)], n_resamples=n_resamples, seed=seed)
    gap = bootstrap_indices_ci(lambda i: pearson_columns(pred[i], true[i]).mean() - pearson_columns(pred[i], true[perm][i]).mean(),
                               [len(true)], n_resamples=n_resamples, seed=seed)
    return {"matched": matched.to_dict(), "shuffled": shuffled.to_dict(), "matched_minus_shuffled": gap.to_dict(), "n": int(len(true))}


# --- distributions and cells ---------------------------------------------------------------------
def distribution(extractor, real_features: np.ndarray, fake: np.ndarray, *, seed: int = 0) -> dict:
    from ..metrics.distribution import fid_kid

    f_fake = extractor.extract(to_nchw(fake))
    return fid_kid(real_features, f_fake, min_samples=2, n_resamples=200, seed=seed,
                   kid_subset_size=min(len(real_features), len(f_fake), 100))


def cells(real: np.ndarray, fake: np.ndarray, *, seed: int = 0) -> dict:
    from ..metrics.cells import NucleusSegmenter, analyse_tiles, compare_populations

    from ..errors import MupdError

    seg = NucleusSegmenter(nucleus_diameter=NUCLEUS_DIAMETER_PX)
    try:
        result = compare_populations(analyse_tiles(real, seg), analyse_tiles(fake, seg), n_resamples=100, seed=seed)
    except MupdError as exc:  # e.g. no nucleus found in the samples of an undertrained model: say so
        return {"error": str(exc)}
    result.pop("per_feature_wasserstein_1d", None)
    return result


def evaluate(trainer, data, rows: np.ndarray, *, steps: int, seed: int, with_cells: bool = True,
             latents: torch.Tensor | None = None, readout: Readout | None = None) -> dict:
    """Held-out spots: RNA-conditioned vs unconditional samples (FID/KID, read-out, cells).
    ``latents``: every spot's latents when already encoded; ``readout``: one already fitted."""
    from ..metrics.features import build_extractor

    real = data.pixels[rows]
    extractor = build_extractor(FID_EXTRACTOR)
    f_real = extractor.extract(real)
    readout = readout or Readout(trainer.vae).fit(data, latents)
    true = data.pathway_scores[rows][:, readout.targets]
    real_pred = readout.predict(real, None if latents is None else latents[rows])
    out = {"held_out_spots": int(len(rows)), "feature_extractor": extractor.describe(), "readout": readout.describe(),
           "readout_on_real_crops": readout_agreement(real_pred, true, seed=seed)}
    for mode in ("rna", "none"):
        fake = generate(trainer, data, rows, mode, steps=steps, seed=seed)
        entry = {"fid_kid_vs_real_of_same_spots": distribution(extractor, f_real, fake, seed=seed),
                 "readout": readout_agreement(readout.predict(fake), true, seed=seed)}
        if with_cells:
            entry["cells_vs_real_of_same_spots"] = cells(np.asarray(real.permute(0, 2, 3, 1)), fake, seed=seed)
        out[mode] = entry
    return out


# --- the grid and the page -------------------------------------------------------------------------
def held_out_grid(trainer, data, rows: np.ndarray, path: Path, *, steps: int, seed: int) -> Path:
    """Columns = held-out spots; rows = the real crop, then RNA alone, text alone, both, none."""
    from .preview import labelled_grid, save_png

    grid = [(MODE_LABELS["real"], np.asarray(data.pixels[rows].permute(0, 2, 3, 1)))]
    for mode in MODES:
        if mode in ("text", "both") and "text" not in trainer.encoders:
            continue
        grid.append((MODE_LABELS[mode], generate(trainer, data, rows, mode, steps=steps, seed=seed + 7)))
    return save_png(labelled_grid(grid, scale=2), path)


def _fmt(e: dict) -> str:
    return f"{e['value']:.3g} [{e['low']:.3g}, {e['high']:.3g}]"


def write_report(out: Path, metrics: dict) -> Path:
    ev = metrics["evaluation"]
    rows = [("held-out spots", ev["held_out_spots"]),
            ("feature extractor", ev["feature_extractor"]["name"]),
            ("read-out validation r (real crops, training sections)", ev["readout"]["validation_pearson_mean"]),
            ("read-out r on real C5 crops (ceiling)", _fmt(ev["readout_on_real_crops"]["matched"]))]
    for mode, label in (("rna", "RNA-conditioned"), ("none", "unconditional")):
        e = ev[mode]
        rows += [(f"FID {label} vs real C5 crops", _fmt(e["fid_kid_vs_real_of_same_spots"]["fid"])),
                 (f"KID {label}", _fmt(e["fid_kid_vs_real_of_same_spots"]["kid"])),
                 (f"read-out r, {label}: matched RNA", _fmt(e["readout"]["matched"])),
                 (f"read-out r, {label}: shuffled RNA", _fmt(e["readout"]["shuffled"]))]
        if "feature_wasserstein_emd" in e.get("cells_vs_real_of_same_spots", {}):
            rows.append((f"nucleus-feature Wasserstein, {label}", _fmt(e["cells_vs_real_of_same_spots"]["feature_wasserstein_emd"])))
    gen = metrics["generator"]
    rows += [("generator", f"{gen['parameters']:,} parameters, {gen['images_seen']} images in {gen['seconds']} s"),
             ("autoencoder", metrics["autoencoder"]["note"]), ("total time", f"{metrics['total_seconds']} s")]
    table = "\n".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    grid = base64.b64encode((Path(out) / "grid.png").read_bytes()).decode()
    captions = metrics["recipe"].get("captions") or {}
    warning = ev["feature_extractor"].get("warning") or ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mupd her2st demo</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}} th{{text-align:left;padding-right:1em}}
td,th{{border-bottom:1px solid #ddd;padding:4px}} img{{max-width:100%;image-rendering:pixelated}} .note{{color:#555}}</style></head>
<body><h1>mupd demo: RNA-conditioned H&amp;E on her2st</h1>
<p>A small MuPD trained on the CPU for a few minutes on spots of sections {', '.join(metrics['recipe']['train_sections'])};
every image and number below is on section C5, never seen in training. Columns are held-out spots; the first row
is the real crop, the others are samples from that spot's RNA alone, its caption alone, both, and nothing (the same
noise in every row, so rows differ only by the condition).</p>
<img src="data:image/png;base64,{grid}" alt="held-out grid">
<p class="note">Captions: {html.escape(str(captions.get('source', 'none')))}; template "{html.escape(str(captions.get('template', '')))}".
A model this small learns colour, stain and cellularity, not convincing histology; the read-out rows say whether the
RNA it was given is visible in what it drew (matched above shuffled).</p>
<h2>Numbers (95 % bootstrap intervals over spots)</h2><p class="note">{html.escape(warning)}</p><table>{table}</table>
<p>Everything: <code>metrics.json</code>; the pipeline folder: <code>checkpoint/</code>
(<code>Pipeline.from_pretrained(...)(rna={{gene: count, ...}})</code>).</p></body></html>"""
    path = Path(out) / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def summary_line(metrics: dict) -> str:
    ev = metrics["evaluation"]
    return json.dumps({m: {"fid": round(ev[m]["fid_kid_vs_real_of_same_spots"]["fid"]["value"], 2),
                           "readout_matched": round(ev[m]["readout"]["matched"]["value"], 3),
                           "readout_shuffled": round(ev[m]["readout"]["shuffled"]["value"], 3)} for m in ("rna", "none")})
