"""``mupd demo --dataset her2st``: RNA-conditioned H&E on paired real data, on a CPU in minutes.

her2st (Andersson et al. 2021) spots carry both an H&E crop and a transcriptome. The recipe:

* image: a 128 px crop around each spot (~100 um, the spot's own footprint) resized to 64 px,
  encoded by the pretrained TAEF2 autoencoder (32 x 8 x 8 latents) when it is on disk, else by a
  tiny autoencoder trained here first;
* RNA: raw counts -> ``GeneVocabulary`` (log1p CPM, z-scored on the training spots, the genes of
  the 50 MSigDB Hallmark pathways of SurvPath's set) -> ``pathway-tokens`` (one token per pathway, scaled by its score:
  the mean z-score of its genes, exactly ``PathwayScorer.score``);
* text: the imaged sections carry no pathologist labels here, so each spot's region label
  ("invasive cancer", "immune infiltrate", ...) is *transferred* from the labelled sections of the
  same patients (B1, C1 in ``ST-pat/lbl``) by a logistic regression on pathway scores, and
  templated into a caption. The caption is therefore a coarse summary of the same RNA;
* train on sections B4, C2, C3, C4; everything shown and measured is on section C5, never seen.

Outputs (``OUT/``): ``grid.png`` (held-out spots: real crop, then samples from RNA alone, text
alone, both and none), ``metrics.json``, ``report.html``, ``checkpoint/`` (a pipeline folder that
``Pipeline.from_pretrained`` reloads and that generates from a ``{gene: count}`` dict).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import MupdError, require

TRAIN_SECTIONS = ("B4", "C2", "C3", "C4")
HELD_OUT_SECTIONS = ("C5",)
LABELLED_SECTIONS = ("B1", "C1")  # same patients as the imaged sections, pathologist labels in ST-pat/lbl
CROP, SIZE = 128, 64
GENESETS = Path("genesets") / "hallmarks_signatures.csv"  # the 50 MSigDB Hallmarks of SurvPath's 331: 50 tokens fit a CPU
DEMO_MODEL = {"depth": 4, "hidden_size": 128, "num_heads": 4}
CAPTION = "HER2-positive breast cancer, {}"


@dataclass
class Her2stData:
    """Spots of the training and held-out sections, ready for training and evaluation."""

    pixels: torch.Tensor  # (N, 3, S, S) uint8
    counts: np.ndarray  # (N, G) raw counts
    genes: list[str]
    ids: list[str]
    sections: list[str]
    train: np.ndarray  # (N,) bool: a training spot (else held out)
    vocabulary: object  # GeneVocabulary
    scorer: object  # PathwayScorer
    rna: np.ndarray  # (N, V) z-scored vocabulary values (the model's RNA input)
    pathway_scores: np.ndarray  # (N, P)
    regions: list[str] = field(default_factory=list)  # transferred region label per spot
    captions: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def gene_dict(self, i: int) -> dict[str, float]:
        """Spot ``i``'s raw counts as ``{gene: count}`` (what a user would pass to a pipeline). Zeros
        stay in: a gene left out is filled with the training mean, not with "not expressed"."""
        return {g: float(v) for g, v in zip(self.genes, self.counts[i])}


def her2st_root(root: str | Path | None = None) -> Path:
    from ..settings import sample_data_dir

    if root is not None:
        path = Path(root)
    else:
        sample = sample_data_dir()
        require(sample is not None, "the her2st demo needs the sample data: set MUPD_SAMPLE_DATA to the folder holding her2st/")
        path = sample / "her2st"
    require((path / "ST-cnts").is_dir() and (path / "ST-imgs").is_dir(),
            f"{path} is not a her2st folder (needs ST-cnts/ and ST-imgs/ from github almaan/her2st)")
    return path


def genesets_path(root: Path) -> Path:
    path = root.parent / GENESETS
    require(path.exists(), f"{path} is missing: the her2st recipe scores the MSigDB Hallmarks of the SurvPath gene sets ({GENESETS})")
    return path


def load_data(root: str | Path | None = None, *, crop: int = CROP, size: int = SIZE, max_spots: int | None = None,
              captions: bool = True, sections: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> Her2stData:
    """Read the sections, fit the vocabulary on the training spots only, score pathways, caption.
    ``sections``: (training, held-out) section names, default (B4, C2, C3, C4), (C5)."""
    from ..data.expression import GeneVocabulary, normalise
    from ..data.pathways import PathwayScorer
    from ..data.spatial import load_her2st

    root = her2st_root(root)
    scorer = PathwayScorer.from_csv(genesets_path(root))
    train_sections, held_sections = sections or (TRAIN_SECTIONS, HELD_OUT_SECTIONS)
    require(not set(train_sections) & set(held_sections), f"training and held-out sections overlap: {train_sections}, {held_sections}")
    table = load_her2st(root, tuple(train_sections) + tuple(held_sections), crop=crop, size=size, max_spots=max_spots)
    train = np.isin(table.section, train_sections)
    require(train.any() and (~train).any(), f"{root}: need spots of both {train_sections} and {held_sections}")
    # vocabulary: the pathway genes measured here; library size from every gene (CPM over the whole spot)
    x = normalise(table.counts[train], "log1p_cpm", genes=table.genes)
    index = {g: k for k, g in enumerate(table.genes)}
    keep = [index[g] for g in scorer.genes if g in index]
    std = x[:, keep].std(0)
    vocabulary = GeneVocabulary([table.genes[k] for k in keep], "log1p_cpm", x[:, keep].mean(0), np.where(std < 1e-6, 1.0, std),
                                meta={"n_fit_samples": int(train.sum()), "fitted_on": list(train_sections),
                                      "genes": "genes of the pathway set measured in her2st"})
    rna, _ = vocabulary.transform(table.counts, table.genes)
    scores = scorer.score(rna, vocabulary.genes)
    data = Her2stData(torch.from_numpy(table.images).permute(0, 3, 1, 2).contiguous(), table.counts, list(table.genes),
                      list(table.ids), list(table.section), train, vocabulary, scorer, rna, scores,
                      meta={"root": str(root), "train_sections": list(train_sections), "held_out_sections": list(held_sections), "crop_px": crop, "size_px": size, "um_per_px_source": 0.78, "skipped": table.skipped})
    if captions:
        data.regions, data.meta["captions"] = transfer_regions(root, vocabulary, scorer, scores)
        data.captions = [CAPTION.format(r) for r in data.regions]
    return data


def transfer_regions(root: Path, vocabulary, scorer, scores: np.ndarray) -> tuple[list[str], dict]:
    """Region label per spot, learnt from the pathologist-labelled sections of the same patients."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    features, labels = [], []
    for section in LABELLED_SECTIONS:
        counts_path = root / "ST-cnts" / f"{section}.tsv.gz"
        label_path = root / "ST-pat" / "lbl" / f"{section}_labeled_coordinates.tsv"
        if not (counts_path.exists() and label_path.exists()):
            continue
        counts = pd.read_csv(counts_path, sep="\t", index_col=0)
        lbl = pd.read_csv(label_path, sep="\t").dropna(subset=["x", "y"])
        lbl.index = lbl["x"].round().astype(int).astype(str) + "x" + lbl["y"].round().astype(int).astype(str)
        lbl = lbl[~lbl.index.duplicated() & (lbl["label"] != "undetermined")]
        common = [i for i in lbl.index if i in counts.index]
        z, _ = vocabulary.transform(counts.loc[common].to_numpy(np.float32), [str(g) for g in counts.columns])
        features.append(scorer.score(z, vocabulary.genes))
        labels += lbl.loc[common, "label"].tolist()
    require(len(set(labels)) >= 2, f"{root}/ST-pat/lbl: no labelled spots of {LABELLED_SECTIONS} to transfer region labels from")
    clf = LogisticRegression(max_iter=300, C=0.1).fit(np.concatenate(features), labels)
    predicted = [str(p) for p in clf.predict(scores)]
    classes, counts = np.unique(predicted, return_counts=True)
    info = {"source": f"pathologist labels of {list(LABELLED_SECTIONS)} (ST-pat/lbl) transferred by logistic regression "
                      "on pathway scores; the imaged sections have no labels here, so captions summarise the RNA",
            "labelled_spots": len(labels), "template": CAPTION, "predicted": dict(zip(classes.tolist(), counts.tolist()))}
    return predicted, info


def autoencoder(pixels: torch.Tensor, *, seconds: float, seed: int, progress: bool):
    """TAEF2 (pretrained, offline) when present, else a tiny AutoencoderKL trained for ``seconds``."""
    from ..encoders.vae import LatentAutoencoder

    try:
        vae = LatentAutoencoder.from_pretrained("taef2")
        trained = {"kind": "taef2", "note": "pretrained TAEF2 (MIT), not trained here"}
    except Exception:  # noqa: BLE001 - any failure to find/read it means: train our own
        from ..encoders.vae_train import fit_autoencoder

        vae = LatentAutoencoder.tiny(block_out_channels=(16, 32, 32), latent_channels=4, sample_size=pixels.shape[-1],
                                     norm_num_groups=8, seed=seed)
        fit = fit_autoencoder(vae, pixels.float() / 127.5 - 1.0, seconds=seconds, batch_size=32, lr=2e-3, crop=32, seed=seed,
                              progress=progress)
        trained = {"kind": "kl", "note": f"tiny AutoencoderKL trained here for {fit['seconds']:.0f} s ({fit['images_seen']} crops)"}
    subset = pixels[:: max(1, len(pixels) // 256)]  # 256 crops pin the per-channel statistics well enough
    vae.fit_latent_stats(subset[s:s + 64].float() / 127.5 - 1.0 for s in range(0, len(subset), 64))
    return vae.eval(), trained


def train_config(out: Path, genesets: Path, *, seed: int, regions: list[str] | None = None, rna: bool = True,
                 attention: str = "decoupled", total_images: int = 10**7, align: dict | None = None, progress: bool = True):
    """The her2st recipe as a ``TrainConfig`` (``configs/her2st-rna.yaml`` is the same for ``mupd train``).
    The RNA encoder takes its genes from the training data's vocabulary; the trainer's checkpoint
    stores its weights and the vocabulary. ``regions``: caption labels (text on), None = no text."""
    from .config import TrainConfig

    conditions = {}
    if regions:
        conditions["text"] = {"name": "hashed-words", "kwargs": {"width": 64, "max_length": 16}}
    if rna:
        conditions["rna"] = {"name": "pathway-tokens", "field": "rna_values", "kwargs": {"pathways": str(genesets), "width": 64}}
    return TrainConfig.from_dict({
        "preset": "demo", "output": str(out), "seed": seed, "total_images": total_images,
        "model": {"attention": attention, "overrides": dict(DEMO_MODEL)},
        "data": {"source": "shards", "path": "(in memory: mupd.train.demo_her2st)", "image_size": SIZE,
                 "captions": {r: CAPTION.format(r) for r in sorted(set(regions or []))}},
        "conditions": conditions, "ema": {"decay": 0.995, "warmup": True}, "dropout": {"p_each": 0.1, "p_all": 0.1},
        "intervals": {"log": 512, "preview": 0, "checkpoint": 0},
        **({"align": align} if align else {}), "progress": progress,
    })


def train_data(data: Her2stData, latents: torch.Tensor, *, pixels: bool = False):
    """The training spots as ``TrainData`` (latents, captions, ``rna_values`` + their vocabulary)."""
    from .data import TrainData

    rows = np.where(data.train)[0]
    captions = [data.captions[i] for i in rows] if data.captions else [""] * len(rows)
    tensors = {"rna_values": torch.from_numpy(data.rna[rows])}
    if pixels:  # the alignment encoder's input
        tensors["pixels"] = data.pixels[rows]
    return TrainData(latents[rows], torch.full((len(rows),), -1, dtype=torch.long), captions, tensors,
                     ids=[data.ids[i] for i in rows], vocabulary=data.vocabulary)


def fit_model(data: Her2stData, vae, latents: torch.Tensor, out: Path, *, seed: int, seconds: float | None = None,
              total_images: int | None = None, text: bool = True, attention: str = "decoupled", align: dict | None = None,
              progress: bool = True):
    """Train on the training spots; returns (trainer, fit summary)."""
    from .loop import Trainer

    out.mkdir(parents=True, exist_ok=True)
    cfg = train_config(out, genesets_path(her2st_root_of(data)), seed=seed, regions=data.regions if text else None,
                       attention=attention, total_images=total_images or 10**7, align=align, progress=progress)
    trainer = Trainer(cfg, data=train_data(data, latents, pixels=bool(align)), vae=vae, device="cpu", resume=False)
    result = trainer.fit(max_seconds=seconds)
    return trainer, result


def her2st_root_of(data: Her2stData) -> Path:
    return Path(data.meta.get("root") or her2st_root())


def run_demo_her2st(*, minutes: float = 10.0, out: str | Path = "./mupd-demo-her2st", seed: int = 0, progress: bool = True,
                    threads: int | None = None, root: str | Path | None = None, max_spots: int | None = None,
                    sample_steps: int = 20, grid_spots: int = 8, sections: tuple | None = None,
                    images: int | None = None) -> dict:
    """Run the her2st demo; returns ``{"out": folder, "metrics": metrics.json dict}``. ``images``:
    train on exactly this many images instead of filling the time budget."""
    from ..checkpoint import write_json
    from ..settings import apply_threads
    from .data import encode_pixels
    from .report_her2st import evaluate, held_out_grid, write_report

    require(minutes > 0, f"--minutes must be positive, got {minutes}")
    t0 = time.perf_counter()
    budget = 60.0 * minutes
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    apply_threads(threads)
    data = load_data(root, max_spots=max_spots, sections=sections)
    vae, ae_info = autoencoder(data.pixels[data.train], seconds=0.2 * budget, seed=seed, progress=progress)
    latents = encode_pixels(vae, data.pixels, progress=progress)
    # the generator gets what is left after loading and encoding, minus ~25 % for samples and
    # metrics, but never less than half the budget (on a busy machine the encoding alone can take it)
    seconds = max(budget - (time.perf_counter() - t0) - 0.25 * budget, 0.5 * budget)
    trainer, result = fit_model(data, vae, latents, out, seed=seed, seconds=None if images else seconds, total_images=images,
                                progress=progress)
    ckpt = trainer.checkpoint_dir  # the pipeline folder: model, EMA, TAEF2, RNA encoder weights, gene vocabulary
    held = np.where(~data.train)[0]
    grid_rows = held[np.linspace(0, len(held) - 1, min(grid_spots, len(held))).astype(int)]
    held_out_grid(trainer, data, grid_rows, out / "grid.png", steps=sample_steps, seed=seed)
    evaluation = evaluate(trainer, data, held, steps=sample_steps, seed=seed, latents=latents)
    metrics = {
        "recipe": {"train_sections": data.meta["train_sections"], "held_out_sections": data.meta["held_out_sections"],
                   "crop_px": CROP, "size_px": SIZE, "train_spots": int(data.train.sum()), "held_out_spots": int(len(held)),
                   "genes": len(data.vocabulary), "pathways": len(data.scorer), "captions": data.meta.get("captions")},
        "autoencoder": ae_info,
        "generator": {"parameters": trainer.model.num_parameters(), **DEMO_MODEL, "images_seen": result["images_seen"],
                      "seconds": round(result["seconds"], 1), "images_per_s": round(result["images_per_s"], 1),
                      "loss_first_10pct": float(np.mean(result["losses"][: max(1, len(result["losses"]) // 10)])),
                      "loss_last_10pct": float(np.mean(result["losses"][-max(1, len(result["losses"]) // 10):])),
                      "sampler": {"method": "heun", "steps": sample_steps, "guidance": 2.0}},
        "evaluation": evaluation,
        "settings": {"minutes": minutes, "seed": seed, "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "checkpoint": str(ckpt),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "metrics.json", metrics)
    write_report(out, metrics)
    return {"out": str(out), "metrics": metrics}
