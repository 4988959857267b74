"""Paired samples for contrastive alignment, with a held-out split by patient / section / slide.

* ``pcam``: image <-> caption written from the label (PCam's train and valid splits come from
  different slides, so they are the held-out split);
* ``her2st``: spot image crop <-> spot expression (train sections vs held-out sections);
* ``tcga``: bulk expression <-> cancer-type text (patients hashed into train/test).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import MupdError, require
from ..settings import sample_data_dir
from .config import AlignConfig

PCAM_CLASSES = ("normal lymph node", "metastatic tumour")
PCAM_CAPTIONS = {
    0: ["normal lymph node tissue", "lymph node without metastasis", "benign lymphoid tissue with no tumour",
        "an H&E patch of normal lymph node", "reactive lymph node, no tumour cells"],
    1: ["metastatic carcinoma in a lymph node", "lymph node with tumour metastasis", "tumour cells infiltrating the lymph node",
        "an H&E patch of metastatic tumour", "metastatic breast cancer cells"],
}
PCAM_PROMPTS = {0: "an H&E patch of normal lymph node", 1: "an H&E patch of metastatic tumour"}
TCGA_NAMES = {"blca": "bladder urothelial carcinoma", "brca": "breast invasive carcinoma", "coadread": "colorectal adenocarcinoma",
              "gbmlgg": "glioma", "hnsc": "head and neck squamous cell carcinoma", "kirc": "kidney clear cell carcinoma",
              "kirp": "kidney papillary cell carcinoma", "lihc": "liver hepatocellular carcinoma", "luad": "lung adenocarcinoma",
              "lusc": "lung squamous cell carcinoma", "paad": "pancreatic adenocarcinoma", "skcm": "skin cutaneous melanoma",
              "stad": "stomach adenocarcinoma"}


@dataclass
class PairData:
    """Aligned samples: ``items[m]`` is the batchable data of modality m (uint8 images, texts, expression)."""

    items: dict
    groups: list  # patient / section / split of each sample (held-out unit)
    labels: np.ndarray | None = None
    class_prompts: list | None = None  # zero-shot prompt per label
    vocabulary: object = None  # GeneVocabulary for rna
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.groups)

    def batch(self, index) -> dict:
        index = np.asarray(index)
        out = {}
        for m, v in self.items.items():
            out[m] = [v[i] for i in index] if isinstance(v, list) else v[torch.as_tensor(index)]
        return out


def _root():
    root = sample_data_dir()
    if root is None:
        raise MupdError("align: the sample data folder was not found; set MUPD_SAMPLE_DATA to it")
    return root


def load_pairs(config: AlignConfig, split: str, *, vocabulary=None) -> PairData:
    """``split`` = "train" or "test". RNA is normalised by a vocabulary fitted on train (pass it for test)."""
    require(split in ("train", "test"), f"split must be train or test, not {split!r}")
    loader = {"pcam": _pcam, "her2st": _her2st, "tcga": _tcga}[config.dataset]
    return loader(config, split, vocabulary)


def _pcam(config: AlignConfig, split: str, vocabulary) -> PairData:
    from PIL import Image

    folder = _root() / "pcam" / ("train" if split == "train" else "valid")
    require(folder.is_dir(), f"PCam folder {folder} is missing")
    rng = np.random.default_rng(config.seed + (split == "test"))
    images, labels, texts = [], [], []
    for label in (0, 1):
        files = sorted((folder / str(label)).glob("*.jpg"))
        if config.max_per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), min(config.max_per_class, len(files)), replace=False))]
        for f in files:
            try:
                img = Image.open(f).convert("RGB").resize((config.image_size, config.image_size), Image.BILINEAR)
            except OSError as exc:
                raise MupdError(f"{f} is not a readable image ({exc}); remove or replace it") from None
            images.append(np.asarray(img))
            labels.append(label)
            texts.append(PCAM_CAPTIONS[label][rng.integers(len(PCAM_CAPTIONS[label]))])
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return PairData({"image": tensor, "text": texts}, [f"pcam-{split}"] * len(labels), np.array(labels),
                    [PCAM_PROMPTS[0], PCAM_PROMPTS[1]], extra={"captions": PCAM_CAPTIONS})


def _her2st(config: AlignConfig, split: str, vocabulary) -> PairData:
    from ..data.expression import GeneVocabulary
    from ..data.spatial import load_her2st

    sections = config.train_sections if split == "train" else config.test_sections
    overlap = set(config.train_sections) & set(config.test_sections)
    require(not overlap, f"her2st sections {sorted(overlap)} are in both train and test; a held-out split must not share sections")
    table = load_her2st(_root() / "her2st", sections, crop=224, size=config.image_size)
    if vocabulary is None:
        require(split == "train", "the test split needs the vocabulary fitted on the train split")
        vocabulary = GeneVocabulary.fit(table.counts, table.genes, normalisation="log1p_cpm", top_k=config.n_genes)
    x, _ = vocabulary.transform(table.counts, table.genes)
    images = torch.from_numpy(np.ascontiguousarray(table.images)).permute(0, 3, 1, 2).contiguous()
    return PairData({"image": images, "rna": torch.from_numpy(x)}, list(table.section), vocabulary=vocabulary,
                    extra={"ids": table.ids, "coords": table.coords})


def _patient_in_test(case_id: str, fraction: float) -> bool:
    digest = hashlib.blake2b(case_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def _tcga(config: AlignConfig, split: str, vocabulary) -> PairData:
    import pandas as pd

    from ..data.expression import GeneVocabulary

    frames, genes = [], None
    for cohort in config.tcga_cohorts:
        path = _root() / "tcga" / f"tcga_{cohort}_all_clean.csv.gz"
        require(path.exists(), f"TCGA table {path} is missing (cohort '{cohort}')")
        head = pd.read_csv(path, nrows=0).columns
        rna = [c for c in head if c.endswith("_rnaseq")]
        require(bool(rna), f"{path} has no *_rnaseq columns (cohort '{cohort}' has no RNA)")
        table = pd.read_csv(path, usecols=["case_id", "oncotree_code", *rna])
        table["cohort"] = cohort
        frames.append(table)
        genes = rna if genes is None else [g for g in genes if g in set(rna)]
    table = pd.concat([f[["case_id", "oncotree_code", "cohort", *genes]] for f in frames], ignore_index=True)
    table = table.dropna(subset=genes)
    test = table["case_id"].map(lambda c: _patient_in_test(str(c), config.test_fraction))
    table = table[test == (split == "test")]
    values = table[genes].to_numpy(np.float32)
    names = [g[: -len("_rnaseq")] for g in genes]
    if vocabulary is None:
        require(split == "train", "the test split needs the vocabulary fitted on the train split")
        vocabulary = GeneVocabulary.fit(values, names, normalisation="none", zscore=True)
    x, _ = vocabulary.transform(values, names)
    cohorts = list(config.tcga_cohorts)
    texts = [f"{TCGA_NAMES.get(c, c)}, {str(o).lower()}" for c, o in zip(table["cohort"], table["oncotree_code"])]
    labels = np.array([cohorts.index(c) for c in table["cohort"]])
    prompts = [TCGA_NAMES.get(c, c) for c in cohorts]
    return PairData({"rna": torch.from_numpy(x), "text": texts}, table["case_id"].astype(str).tolist(), labels, prompts,
                    vocabulary=vocabulary)
