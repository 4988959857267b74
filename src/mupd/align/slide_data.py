"""Slide-level triples for mSTAR/TANGLE-style alignment: bag of tile features <-> bulk RNA <-> report.

No whole slides with expression are offline, so her2st gives real stand-ins (as ``mupd impute
slide-train`` does): a *pseudo-slide* is a contiguous region of a section (a seed spot and its
nearest spots); its tiles are the spots' crops, its bulk profile the region's summed counts. Training
regions are drawn at random and may overlap; held-out regions partition the test sections into
disjoint bags, so no spot is in two test bags. Train and test never share a section.

The "report" is templated: her2st has no pathology reports, so each region gets a sentence naming the
level (tercile among the *training* regions) of HER2 (ERBB2), ER (ESR1), immune (PTPRC, CD74, IGKC) and
stroma (COL1A1, COL1A2, COL3A1) marker expression — a receptor-status style summary, derived from the
region's own counts, standing in for real report text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import require
from .config import AlignConfig

MARKERS = {"ERBB2": ("ERBB2",), "ESR1": ("ESR1",), "immune": ("PTPRC", "CD74", "IGKC"), "stroma": ("COL1A1", "COL1A2", "COL3A1")}
LEVELS = ("low", "intermediate", "high")


@dataclass
class SlideData:
    """Pseudo-slides: ``features`` (B, N, D) padded tile features with ``mask``; ``spots`` (B, N) the
    spot index of each tile in ``crops`` (-1 = padding); ``items`` the other modalities per bag."""

    features: torch.Tensor
    mask: torch.Tensor
    spots: torch.Tensor
    crops: torch.Tensor  # (S, 3, H, W) uint8 spot crops of the split
    items: dict
    groups: list  # section of each bag
    vocabulary: object = None
    report_rule: dict = field(default_factory=dict)
    levels: dict = field(default_factory=dict)  # marker -> (B,) level index 0/1/2
    scores: dict = field(default_factory=dict)  # marker -> (B,) mean log1p-CPM of its genes

    def __len__(self) -> int:
        return len(self.groups)

    def batch(self, index) -> dict:
        index = torch.as_tensor(np.asarray(index))
        out = {"features": self.features[index], "mask": self.mask[index]}
        for m, v in self.items.items():
            out[m] = [v[i] for i in index.tolist()] if isinstance(v, list) else v[index]
        return out

    def patches(self, index) -> torch.Tensor:
        """(b, N, 3, H, W) uint8 crops of the bags ``index`` (padding = crop 0, masked out)."""
        spots = self.spots[torch.as_tensor(np.asarray(index))]
        return self.crops[spots.clamp_min(0)]


def random_regions(sections: np.ndarray, coords: np.ndarray, region: int, per_section: int, seed: int) -> list[np.ndarray]:
    """``per_section`` regions per section: a random seed spot and its ``region - 1`` nearest spots."""
    rng = np.random.default_rng(seed)
    bags = []
    for s in sorted(set(sections.tolist()) - {""}):
        idx = np.where(sections == s)[0]
        require(len(idx) >= region, f"her2st section {s} has {len(idx)} spots, fewer than region={region}")
        for centre in rng.choice(len(idx), per_section, replace=len(idx) < per_section):
            bags.append(idx[np.argsort(((coords[idx] - coords[idx][centre]) ** 2).sum(1), kind="stable")[:region]])
    return bags


def disjoint_regions(sections: np.ndarray, coords: np.ndarray, region: int, seed: int) -> list[np.ndarray]:
    """Partition each section into contiguous regions of ``region`` spots (greedy from random seeds;
    a remainder under half a region is dropped), so no spot is in two bags."""
    rng = np.random.default_rng(seed)
    bags = []
    for s in sorted(set(sections.tolist()) - {""}):
        free = list(np.where(sections == s)[0])
        while len(free) >= max(2, region // 2):
            pool = np.asarray(free)
            centre = coords[pool[rng.integers(len(pool))]]
            take = pool[np.argsort(((coords[pool] - centre) ** 2).sum(1), kind="stable")[:region]]
            bags.append(np.sort(take))
            free = [i for i in free if i not in set(take.tolist())]
    return bags


@functools.lru_cache(maxsize=2)
def _her2st(sections: tuple, image_size: int):
    """her2st spots of ``sections`` (crops, counts, coords), kept for the process: a stage-2 run and its
    evaluation read the same sections as stage 1, and reading the full-resolution JPEGs dominates."""
    from ..data.spatial import load_her2st
    from .data import _root

    return load_her2st(_root() / "her2st", list(sections), crop=224, size=image_size)


def _halves(section: np.ndarray, coords: np.ndarray, split: str) -> np.ndarray:
    """Section names -> "<section>-left" / "<section>-right" (split at the median x); the other split's
    spots get "" and are never in a bag."""
    out = np.full(len(section), "", dtype=object)
    for s in sorted(set(section.tolist())):
        rows = section == s
        left = coords[:, 0] < np.median(coords[rows, 0])
        keep = rows & (left if split == "train" else ~left)
        out[keep] = f"{s}-{'left' if split == 'train' else 'right'}"
    return out.astype(str)


def _marker_scores(log_cpm: np.ndarray, genes: list[str]) -> dict[str, np.ndarray]:
    index = {g: i for i, g in enumerate(genes)}
    out = {}
    for name, members in MARKERS.items():
        cols = [index[g] for g in members if g in index]
        if cols:
            out[name] = log_cpm[:, cols].mean(1)
    return out


def fit_report_rule(bulk: np.ndarray, genes: list[str]) -> dict:
    """Tercile thresholds of each marker score over the training regions."""
    from ..data.expression import normalise

    scores = _marker_scores(normalise(bulk, "log1p_cpm"), list(genes))
    require(bool(scores), "none of the report marker genes (ERBB2, ESR1, PTPRC, COL1A1, ...) is in the counts")
    return {name: [float(t) for t in np.quantile(v, [1 / 3, 2 / 3])] for name, v in scores.items()}


def reports(bulk: np.ndarray, genes: list[str], rule: dict) -> tuple[list[str], dict, dict]:
    """Templated report sentence per region, the level index and the score of each marker."""
    from ..data.expression import normalise

    scores = _marker_scores(normalise(bulk, "log1p_cpm"), list(genes))
    levels = {name: np.searchsorted(rule[name], scores[name], side="right") for name in rule}
    words = {"immune": ("sparse", "moderate", "dense"), "stroma": ("scant", "moderate", "abundant")}
    texts = []
    for i in range(len(bulk)):
        parts = [f"{n} {LEVELS[levels[n][i]]}" for n in ("ERBB2", "ESR1") if n in levels]
        parts += [f"{words[n][levels[n][i]]} {'immune infiltrate' if n == 'immune' else 'stroma'}" for n in ("immune", "stroma")
                  if n in levels]
        texts.append("her2 positive breast carcinoma region, " + ", ".join(parts))
    return texts, levels, scores


def tile_encoder(config: AlignConfig):
    """The frozen tile encoder named by ``config.tile_encoder`` (None = raw pixels, "stain" = stain statistics)."""
    from .towers import SmallImageTower

    if config.tile_encoder in ("pixels", "stain"):
        return None if config.tile_encoder == "pixels" else "stain"
    if config.tile_encoder == "cnn":
        torch.manual_seed(config.seed)
        return SmallImageTower(config.width, config.embed_dim, config.image_size).eval().requires_grad_(False)
    from ..encoders import registry

    return registry.build("image", "mupd-aligned", path=config.tile_encoder).eval()


@torch.no_grad()
def encode_tiles(encoder, crops: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(S, 3, H, W) uint8 -> (S, D) float: the encoder's mean token, or 16x16 RGB pixels."""
    import torch.nn.functional as F

    if encoder is None:
        return F.adaptive_avg_pool2d(crops.float() / 255.0, 16).flatten(1)
    if encoder == "stain":  # weight-free H/E/DAB + gradient statistics (mupd.heads.bags)
        from ..heads.bags import tile_features

        return torch.from_numpy(tile_features(crops.permute(0, 2, 3, 1).numpy()))
    out = []
    for i in range(0, len(crops), batch_size):
        tokens, mask = encoder.encode(crops[i: i + batch_size])
        w = mask.float().unsqueeze(-1)
        out.append(((tokens * w).sum(1) / w.sum(1).clamp_min(1)).float())
    return torch.cat(out)


def load_slides(config: AlignConfig, split: str, *, vocabulary=None, report_rule=None, encoder=None) -> SlideData:
    """Pseudo-slides of the train or test sections; the test split needs the train split's vocabulary
    and report rule (pass them), so nothing is fitted on held-out data."""
    from ..data.expression import GeneVocabulary

    require(split in ("train", "test"), f"split must be train or test, not {split!r}")
    if config.dataset == "pcam-slides":
        return _pcam_slides(config, split, encoder)
    if config.holdout == "section":
        overlap = set(config.train_sections) & set(config.test_sections)
        require(not overlap, f"her2st sections {sorted(overlap)} are in both train and test; a held-out split must not share sections")
    sections = config.train_sections if split == "train" or config.holdout == "half" else config.test_sections
    table = _her2st(tuple(sections), config.image_size)
    section = np.asarray(table.section)
    if config.holdout == "half":
        section = _halves(section, table.coords, split)
    if split == "train":
        bags = random_regions(section, table.coords, config.region, config.bags_per_section, config.seed)
    else:
        bags = disjoint_regions(section, table.coords, config.region, config.seed)
    bulk = np.stack([table.counts[b].sum(0) for b in bags])
    genes = list(table.genes)
    if vocabulary is None or report_rule is None:
        require(split == "train", "the test split needs the vocabulary and report rule fitted on the train split")
        vocabulary = GeneVocabulary.fit(bulk, genes, normalisation="log1p_cpm", top_k=config.n_genes)
        report_rule = fit_report_rule(bulk, genes)
    rna, _ = vocabulary.transform(bulk, genes)
    texts, levels, scores = reports(bulk, genes, report_rule)
    crops = torch.from_numpy(np.ascontiguousarray(table.images)).permute(0, 3, 1, 2).contiguous()
    tiles = encode_tiles(encoder if encoder is not None else tile_encoder(config), crops)
    n = max(len(b) for b in bags)
    spots = torch.full((len(bags), n), -1, dtype=torch.long)
    for i, b in enumerate(bags):
        spots[i, : len(b)] = torch.as_tensor(b)
    mask = spots >= 0
    features = tiles[spots.clamp_min(0)] * mask.unsqueeze(-1)
    return SlideData(features, mask, spots, crops, {"rna": torch.from_numpy(rna), "text": texts},
                     [str(section[b[0]]) for b in bags], vocabulary, report_rule, levels, scores)


PCAM_REPORTS = {0: ("lymph node without metastasis, {n} fields examined", "benign reactive lymph node, no tumour in {n} fields"),
                1: ("metastatic carcinoma in lymph node, {k} of {n} fields involved",
                    "lymph node with tumour metastasis in {k} of {n} fields")}


def _pcam_slides(config: AlignConfig, split: str, encoder) -> SlideData:
    """Bags of PCam patches (``mupd.heads.bags.pcam_bags``: a positive bag holds 1-4 tumour patches) with
    a templated report; train = PCam train, test = PCam valid (other slides)."""
    import torch.nn.functional as F

    from ..heads.bags import pcam_bags
    from .data import _root

    require(config.n_bags * config.bag_size <= 5000, f"align config: n_bags x bag_size = {config.n_bags * config.bag_size} "
            "exceeds the 5,000 normal PCam train patches; lower n_bags or bag_size")
    # PCam valid holds 1,000 normal patches; a bag needs bag_size of them at most.
    n_bags = config.n_bags if split == "train" else min(config.n_bags, 1000 // config.bag_size)
    n_bags -= n_bags % 2
    tiles, flags, labels = pcam_bags(_root() / "pcam", n_bags, config.bag_size, seed=config.seed,
                                     split="train" if split == "train" else "valid")
    rng = np.random.default_rng(config.seed + (split == "test"))
    texts = [PCAM_REPORTS[int(y)][rng.integers(2)].format(k=int(f.sum()), n=len(f)) for y, f in zip(labels, flags)]
    flat = torch.from_numpy(tiles.reshape(-1, *tiles.shape[2:])).permute(0, 3, 1, 2).contiguous()
    encoder = encoder if encoder is not None else tile_encoder(config)
    features = encode_tiles(encoder, flat if encoder == "stain" else _resize(flat, config.image_size))
    crops = _resize(flat, config.image_size)
    b, n = tiles.shape[:2]
    spots = torch.arange(b * n).view(b, n)
    scores = {"tumour": labels.astype(np.float64)}
    return SlideData(features.float().view(b, n, -1), torch.ones(b, n, dtype=torch.bool), spots, crops, {"text": texts},
                     [f"pcam-{split}"] * b, levels={"tumour": labels}, scores=scores)


def _resize(crops: torch.Tensor, size: int) -> torch.Tensor:
    import torch.nn.functional as F

    if crops.shape[-1] == size:
        return crops
    return F.interpolate(crops.float(), size=(size, size), mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
