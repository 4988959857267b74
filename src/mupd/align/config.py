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
    dataset: str = "pcam"  # pcam (image<->text) | her2st (image<->rna) | tcga (rna<->text)
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
}


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
    require(config.dataset in ("pcam", "her2st", "tcga"), f"align config: dataset must be pcam, her2st or tcga, not {config.dataset!r}")
    for pair in config.pairs:
        require(len(pair) == 2 and all(m in ("image", "text", "rna") for m in pair) and pair[0] != pair[1],
                f"align config: each pair must name two different modalities of image/text/rna, got {pair}")
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
