"""The cycle check (the generative link): image -> predicted RNA -> RNA-conditioned generation ->
predicted RNA again, on held-out spots.

For each spot the imputation model predicts expression from the real crop (``first``); a generator
conditioned on that prediction draws a patch; the same imputation model predicts expression from
the patch (``second``). If the generator turns expression into morphology that the imputation model
can read, ``second`` follows ``first`` across spots. The null is the same statistic on shuffled
pairs (the patch generated for spot i against the first prediction of spot pi(i), pi a derangement):
a generator that ignores its RNA scores the null, whatever the image quality.

Figures: per-gene Pearson r over spots (mean over the genes that conditioned the generator) with a
bootstrap interval over spots; per-spot Pearson r over genes after standardising each gene over the
spots (without that, every spot correlates ~1 through the shared mean profile); the permutation
null's mean, 95 % range and p-value. Only genes in both the imputation panel and the generator's
vocabulary take part; too small an overlap is refused (the rest would be filled with the
vocabulary's training mean and the generator would barely see the prediction).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import require
from .evaluate import _columnwise_pearson

MIN_OVERLAP = 0.1  # fraction of the generator's vocabulary the imputation panel must cover


def gene_overlap(panel: Sequence[str], vocabulary_genes: Sequence[str], *, min_overlap: float = MIN_OVERLAP,
                 where: str = "the generator") -> list[str]:
    """Panel genes (in panel order) that the generator's vocabulary knows; refuses a small overlap."""
    vocab = set(map(str, vocabulary_genes))
    common = [str(g) for g in panel if str(g) in vocab]
    fraction = len(common) / max(1, len(vocab))
    require(len(common) >= 2 and fraction >= min_overlap,
            f"the imputation model predicts {len(common)} of the {len(vocab)} genes of {where}'s vocabulary "
            f"({fraction:.1%}, minimum {min_overlap:.0%}); the others would be filled with the training mean. "
            f"Train the imputation model on the generator's genes: mupd impute train --genes-from PIPELINE_DIR")
    return common


@contextlib.contextmanager
def _quiet(logger: str):
    """The vocabulary logs its missing genes once per profile; the cycle reports them once instead."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def as_uint8(images: np.ndarray, side: int) -> np.ndarray:
    """Generated images (float [0, 1] or uint8, (N, H, W, 3)) -> uint8 at ``side`` px (area resize)."""
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    if images.shape[1] == side:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BOX)) for im in images])


class PipelineGenerator:
    """An RNA-conditioned pipeline folder as the cycle's generator. ``scales={"rna": 0}`` switches the
    RNA stream off (the ignoring-generator control). Patch i of a run uses seed ``seed + i``."""

    def __init__(self, pipe, panel: Sequence[str], *, steps: int = 20, guidance: float | None = 2.0,
                 scales: dict | None = None, batch_size: int = 16, min_overlap: float = MIN_OVERLAP):
        require("rna" in pipe.modalities, f"{pipe.path} has no RNA stream (it has {list(pipe.modalities)}); the cycle "
                                          "check needs an RNA-conditioned model, e.g. the checkpoint/ of 'mupd demo --dataset her2st'")
        require(pipe.vocabulary is not None, f"{pipe.path} has no gene_vocabulary.json; its genes cannot be matched")
        require(pipe.vocabulary.normalisation == "log1p_cpm",
                f"{pipe.path}: the generator's vocabulary expects {pipe.vocabulary.normalisation} values, but imputed "
                "expression is log1p-CPM")
        self.pipe, self.steps, self.guidance, self.scales, self.batch_size = pipe, steps, guidance, scales, batch_size
        self.genes = gene_overlap(panel, pipe.vocabulary.genes, min_overlap=min_overlap, where=str(pipe.path))

    def __call__(self, values: np.ndarray, ids: Sequence[str], *, seed: int = 0, progress: bool = True) -> np.ndarray:
        from tqdm.auto import tqdm

        from ..pipelines.inputs import RnaProfile

        out = []
        bar = tqdm(total=len(values), desc="cycle: generate", unit="patch", disable=not progress)
        with _quiet("mupd.data"):
            for start in range(0, len(values), self.batch_size):
                rows = range(start, min(len(values), start + self.batch_size))
                profiles = [RnaProfile(values[i], self.genes, f"imputed:{ids[i]}", normalised="log1p_cpm") for i in rows]
                images = self.pipe(rna=profiles, n=len(profiles), steps=self.steps, guidance=self.guidance,
                                   scales=self.scales, seed=seed + start, batch_size=self.batch_size, output_type="np").images
                out.append(np.asarray(images))
                bar.update(len(profiles))
        bar.close()
        return np.concatenate(out)

    def describe(self) -> dict:
        vocab = self.pipe.vocabulary
        return {"pipeline": str(self.pipe.path), "modalities": list(self.pipe.modalities), "image_size": self.pipe.image_size,
                "vocabulary_genes": len(vocab), "genes_given": len(self.genes),
                "vocabulary_coverage": round(len(self.genes) / len(vocab), 4),
                "missing_genes_filled_with": "the vocabulary's training mean",
                "sampler": {"method": "heun", "steps": self.steps, "guidance": self.guidance, "scales": self.scales}}


def _standardised(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def per_spot_r(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson r over genes per spot, each gene standardised over the spots first."""
    r, _ = _columnwise_pearson(_standardised(first).T, _standardised(second).T)
    return r


def derangements(n: int, k: int, seed: int) -> np.ndarray:
    """``k`` random permutations of ``n`` with no fixed point (one random cycle each)."""
    rng = np.random.default_rng(seed)
    out = np.empty((k, n), dtype=np.int64)
    for j in range(k):
        order = rng.permutation(n)
        out[j, order] = np.roll(order, 1)
    return out


def cycle_statistics(first: np.ndarray, second: np.ndarray, *, n_permutations: int = 200, n_resamples: int = 500,
                     seed: int = 0) -> dict:
    """Matched vs shuffled agreement of two (N, G) predictions of the same spots."""
    from ..metrics.bootstrap import bootstrap_indices_ci, mean_ci

    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    require(first.shape == second.shape and first.ndim == 2, f"predictions {first.shape} and {second.shape} differ")
    require(len(first) >= 4, f"the cycle check needs at least 4 spots, got {len(first)}")
    gene_r, defined = _columnwise_pearson(first, second)
    spot_r = per_spot_r(first, second)
    perms = derangements(len(first), n_permutations, seed)
    null_gene = np.array([_columnwise_pearson(first[p], second)[0].mean() for p in perms])
    null_spot = np.array([per_spot_r(first[p], second).mean() for p in perms])
    matched = bootstrap_indices_ci(lambda i: _columnwise_pearson(first[i], second[i])[0].mean(), [len(first)],
                                   n_resamples=n_resamples, seed=seed)

    def null_summary(values, observed):
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1)),
                "q025": float(np.quantile(values, 0.025)), "q975": float(np.quantile(values, 0.975)),
                "p_value": float((1 + (values >= observed).sum()) / (1 + len(values))), "n_permutations": int(len(values))}

    return {
        "n_spots": int(len(first)), "n_genes": int(first.shape[1]), "n_genes_undefined": int((~defined).sum()),
        "per_gene": {"mean_r": matched.to_dict(), "null": null_summary(null_gene, gene_r.mean()),
                     "matched_minus_null": float(gene_r.mean() - null_gene.mean()),
                     "fraction_r_positive": float((gene_r > 0).mean())},
        "per_spot": {"mean_r": mean_ci(spot_r, n_resamples=n_resamples, seed=seed).to_dict(),
                     "null": null_summary(null_spot, spot_r.mean()), "matched_minus_null": float(spot_r.mean() - null_spot.mean())},
        "null_rule": "patch generated for spot i vs the first prediction of spot pi(i), pi a random derangement",
        "per_spot_rule": "Pearson over genes after standardising each gene over the spots",
    }


def cycle_check(model, images: np.ndarray, ids: Sequence[str], generator, *, measured: np.ndarray | None = None,
                seed: int = 0, n_permutations: int = 200, n_resamples: int = 500, progress: bool = True) -> tuple[dict, np.ndarray]:
    """Run the cycle on these spots' crops; returns (result dict, generated uint8 patches).
    ``measured``: the spots' measured log1p-CPM over ``model.genes`` (optional context figures)."""
    require(not model.config.get("context"), "the cycle check needs a model that reads one crop: a generated patch has no "
                                             "neighbouring spots (train without --context)")
    t0 = time.perf_counter()
    index = {g: k for k, g in enumerate(model.genes)}
    columns = [index[g] for g in generator.genes]
    first = model.predict(images)
    generated = as_uint8(generator(first[:, columns], list(ids), seed=seed, progress=progress), int(images.shape[1]))
    second = model.predict(generated)
    result = {"genes": "imputation panel genes in the generator's vocabulary (those that conditioned it)",
              **cycle_statistics(first[:, columns], second[:, columns], n_permutations=n_permutations,
                                 n_resamples=n_resamples, seed=seed)}
    if measured is not None:  # how far each prediction is from the truth, on the genes measured in these spots
        truth = np.asarray(measured, np.float64)[:, columns]
        have = np.isfinite(truth).all(0)
        result["vs_measured_mean_r"] = {"first_prediction": float(_columnwise_pearson(truth[:, have], first[:, columns][:, have])[0].mean()),
                                        "second_prediction": float(_columnwise_pearson(truth[:, have], second[:, columns][:, have])[0].mean()),
                                        "n_genes_measured": int(have.sum())}
    result["generator"] = generator.describe() if hasattr(generator, "describe") else {"kind": type(generator).__name__}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result, generated


def measured_panel(table, genes: Sequence[str]) -> np.ndarray:
    """Measured log1p-CPM (CPM over all of a spot's genes) over ``genes``; NaN where a gene is not in the table."""
    from .protocols import normalised_panel

    present = [g for g in genes if g in set(table.genes)]
    out = np.full((len(table.ids), len(genes)), np.nan)
    if present:
        index = {g: k for k, g in enumerate(genes)}
        out[:, [index[g] for g in present]] = normalised_panel(table.counts, table.genes, present, sample_ids=table.ids)
    return out


def pairs_png(path: str | os.PathLike, real: np.ndarray, generated: np.ndarray, ids: Sequence[str], n: int = 8) -> Path:
    """Real crops (top row) above the patches generated from their predicted RNA (bottom row)."""
    from PIL import Image, ImageDraw

    rows = np.linspace(0, len(real) - 1, min(n, len(real))).astype(int)
    side, left = int(real.shape[1]) * 2, 70
    canvas = Image.new("RGB", (left + len(rows) * (side + 2) + 2, 2 * (side + 2) + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(("real crop", "generated\nfrom its\npredicted\nRNA")):
        draw.multiline_text((4, 16 + r * (side + 2) + 4), label, fill="black")
    for c, i in enumerate(rows):
        for r, im in enumerate((real[i], generated[i])):
            canvas.paste(Image.fromarray(im).resize((side, side), Image.NEAREST), (left + c * (side + 2), 16 + r * (side + 2)))
        draw.text((left + c * (side + 2), 2), str(ids[i])[-10:], fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
