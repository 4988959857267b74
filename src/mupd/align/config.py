"""``AlignConfig``: a typed config with named presets, readable from YAML, printed by ``--dry-run``.

Units are samples (pairs), not epochs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MupdError, require


@dataclass
class AlignConfig:
    name: str = "custom"
    dataset: str = "pcam"  # pcam (image<->text) | her2st (image<->rna) | tcga (rna<->text) | her2st-slides (slide<->rna<->text)
    pairs: list = field(default_factory=lambda: [["image", "text"]])
    # data
    image_size: int = 64
    max_per_class: int | None = 1000  # pcam: patches per class and split
    train_sections: list = field(default_factory=lambda: ["B4", "C2", "C3", "C4"])  # her2st
    test_sections: list = field(default_factory=lambda: ["C5"])
    n_genes: int = 256  # her2st: most variable genes kept by the GeneVocabulary
    tcga_cohorts: list = field(default_factory=lambda: ["brca", "kirc", "luad", "lusc", "coadread", "skcm"])
    test_fraction: float = 0.2  # tcga: fraction of patients held out
    # extra positives in the contrastive loss: "text" = samples with identical text, "label" = samples
    # with the same label (captions written from labels), "none" = only the paired sample
    positives: str = "text"
    # towers
    width: int = 128
    embed_dim: int = 128
    text_depth: int = 2
    text_max_length: int = 32
    rna_hidden: int = 256
    # optimisation
    batch_size: int = 64
    lr: float = 1e-4  # 1e-3 collapsed the PCam image/text towers to one point within a few steps
    weight_decay: float = 0.05
    total_samples: int = 20_000
    log_every: int = 2_000
    checkpoint_every: int = 10_000
    seed: int = 0
    device: str = "auto"
    # slide level (dataset her2st-slides; see align/slide_data.py and align/slide_train.py)
    stage: str = "align"  # align (mSTAR stage 1 / TANGLE) | distill (mSTAR stage 2, needs stage1)
    stage1: str | None = None  # distill: folder written by a stage-1 slide run
    aggregator: str = "abmil"  # abmil | transmil
    tile_encoder: str = "cnn"  # cnn: the small image CNN, seeded (stage 2 fine-tunes it) | pixels | a mupd-aligned folder
    # held-out bags: "section" = regions of test_sections (never trained on); "half" = regions of the other
    # half (larger x) of the train sections themselves: a within-section check (same stain, unseen spots)
    holdout: str = "section"
    region: int = 16  # spots per pseudo-slide (a seed spot and its nearest neighbours)
    bags_per_section: int = 48  # training pseudo-slides per section (overlapping regions)
    n_bags: int = 200  # pcam-slides: training bags (held-out bags: PCam valid, other slides)
    bag_size: int = 16  # pcam-slides: patches per bag
    batch_within_section: bool = True  # each batch from one section (negatives are other regions of it)
    temperature: float = 0.07  # initial InfoNCE temperature (learned)
    ema_decay: float = 0.99  # distill: EMA of the teacher patch encoder
    distill_centre: bool = True  # distill: cosine on batch-centred vectors (uncentred collapses on her2st, see slide.py)
    # collapse guard: per-check embedding std (x sqrt(dim), ~1 when spread, 0 when collapsed) and
    # effective rank (exp entropy of normalised singular values); patience = consecutive bad checks
    collapse_min_std: float = 0.05
    collapse_min_rank: float = 1.5
    collapse_patience: int = 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "pcam-image-text": dict(dataset="pcam", pairs=[["image", "text"]], total_samples=24_000, positives="label"),
    "her2st-image-rna": dict(dataset="her2st", pairs=[["image", "rna"]], total_samples=16_000, batch_size=64, lr=1e-3),
    "tcga-rna-text": dict(dataset="tcga", pairs=[["rna", "text"]], total_samples=16_000, batch_size=128),
    # for tests and smoke runs: tiny towers, a few hundred samples
    "tiny-pcam": dict(dataset="pcam", pairs=[["image", "text"]], positives="label", image_size=32, max_per_class=24, width=32,
                      embed_dim=16, text_depth=1, batch_size=16, total_samples=64, log_every=32, checkpoint_every=32),
    "tiny-her2st": dict(dataset="her2st", pairs=[["image", "rna"]], image_size=32, train_sections=["B4"],
                        test_sections=["C5"], n_genes=32, width=32, embed_dim=16, rna_hidden=32, batch_size=16,
                        total_samples=64, log_every=32, checkpoint_every=32),
    # slide level, her2st pseudo-slides (random contiguous regions; bulk = summed counts; report templated)
    "tangle-slide": dict(dataset="her2st-slides", pairs=[["slide", "rna"]], image_size=64, n_genes=256, width=64,
                         embed_dim=64, batch_size=32, lr=3e-4, total_samples=12_000, log_every=960, checkpoint_every=1_920),
    "mstar-slide": dict(dataset="her2st-slides", pairs=[["slide", "rna"], ["slide", "text"], ["rna", "text"]],
                        image_size=64, n_genes=256, width=64, embed_dim=64, batch_size=32, lr=3e-4, total_samples=12_000,
                        log_every=960, checkpoint_every=1_920),
    "mstar-distill": dict(dataset="her2st-slides", stage="distill", pairs=[["slide", "rna"]], image_size=64, n_genes=256,
                          width=64, embed_dim=64, batch_size=8, lr=1e-4, total_samples=1_536, log_every=256,
                          checkpoint_every=512),
    # PCam bags <-> a report of the bag (metastasis or not, how many tiles): labels known, learning checkable
    "tangle-pcam": dict(dataset="pcam-slides", pairs=[["slide", "text"]], tile_encoder="stain", image_size=64, width=64,
                        embed_dim=64, n_bags=300, bag_size=16, batch_size=32, lr=1e-3, total_samples=8_000,
                        log_every=800, checkpoint_every=1_600),
    "tiny-slide": dict(dataset="her2st-slides", pairs=[["slide", "rna"], ["slide", "text"]], image_size=32,
                       train_sections=["B4"], test_sections=["C5"], n_genes=32, width=16, embed_dim=16, rna_hidden=32,
                       region=8, bags_per_section=32, batch_size=16, lr=3e-3, total_samples=640, log_every=160,
                       checkpoint_every=160),
    "tiny-pcam-slide": dict(dataset="pcam-slides", pairs=[["slide", "text"]], tile_encoder="stain", image_size=32, width=32,
                            embed_dim=16, text_depth=1, n_bags=80, bag_size=8, batch_size=16, lr=3e-3, total_samples=960,
                            log_every=160, checkpoint_every=320),
}

SLIDE_DATASETS = ("her2st-slides", "pcam-slides")


def preset(name: str, **overrides) -> AlignConfig:
    if name not in PRESETS:
        raise MupdError(f"unknown align preset '{name}'; known: {', '.join(sorted(PRESETS))}")
    return replace(AlignConfig(name=name, **PRESETS[name]), **overrides)


def replace(config: AlignConfig, **overrides) -> AlignConfig:
    known = {f.name for f in dataclasses.fields(AlignConfig)}
    unknown = sorted(set(overrides) - known)
    require(not unknown, f"unknown align config field(s) {unknown}; known: {sorted(known)}")
    config = dataclasses.replace(config, **overrides)
    validate(config)
    return config


def validate(config: AlignConfig) -> None:
    require(config.dataset in ("pcam", "her2st", "tcga", *SLIDE_DATASETS),
            f"align config: dataset must be pcam, her2st, tcga or {'/'.join(SLIDE_DATASETS)}, not {config.dataset!r}")
    slide = config.dataset in SLIDE_DATASETS
    allowed = ("slide", "text", "rna") if slide else ("image", "text", "rna")
    for pair in config.pairs:
        require(len(pair) == 2 and all(m in allowed for m in pair) and pair[0] != pair[1],
                f"align config: each pair must name two different modalities of {'/'.join(allowed)}, got {pair}")
    if slide:
        _validate_slide(config)
    require(config.positives in ("none", "text", "label"), f"align config: positives must be none, text or label, not {config.positives!r}")
    require(config.batch_size >= 2, "align config: batch_size must be at least 2 (contrastive loss needs negatives)")
    require(config.total_samples > 0 and config.checkpoint_every > 0 and config.log_every > 0,
            "align config: total_samples, checkpoint_every and log_every must be positive (units: samples)")


def load_config(name_or_path: str | os.PathLike, **overrides) -> AlignConfig:
    """A preset name, or a YAML file with ``preset: NAME`` (optional) and field overrides."""
    text = os.fspath(name_or_path)
    if text in PRESETS:
        return preset(text, **overrides)
    path = Path(text)
    if not path.exists():
        raise MupdError(f"'{text}' is neither an align preset ({', '.join(sorted(PRESETS))}) nor a config file")
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MupdError(f"{path} is not valid YAML ({exc})") from None
    require(isinstance(data, dict), f"{path} must hold a mapping of config fields")
    base = data.pop("preset", None)
    config = preset(base) if base else AlignConfig(name=path.stem)
    return replace(config, **{**data, **overrides})


def _validate_slide(config: AlignConfig) -> None:
    require(any("slide" in pair for pair in config.pairs), "align config: a slide-level run needs a pair with 'slide'")
    require(config.stage in ("align", "distill"), f"align config: stage must be align or distill, not {config.stage!r}")
    require(config.holdout in ("section", "half"), f"align config: holdout must be section or half, not {config.holdout!r}")
    require(config.aggregator in ("abmil", "transmil"), f"align config: aggregator must be abmil or transmil, not {config.aggregator!r}")
    require(config.region >= 2 and config.bags_per_section >= 1, "align config: region must be >= 2 spots and "
            "bags_per_section >= 1")
    require(config.temperature > 0 and 0 <= config.ema_decay < 1, "align config: temperature must be > 0 and ema_decay in [0, 1)")
    require(config.collapse_patience >= 1, "align config: collapse_patience must be >= 1 (consecutive checks)")
