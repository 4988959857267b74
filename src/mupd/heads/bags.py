"""Slide-like bags from PCam patches for the MIL heads (ABMIL / TransMIL), with frozen tile features.

PCam has no slides, so bags are assembled: each bag draws ``bag_size`` distinct patches; a positive
bag holds 1-4 tumour patches (label 1) among normal ones, a negative bag only normal patches — the
standard MIL assumption (a slide is positive when any tile is). No patch is in two bags, and each
bag is its own "patient" for the folds.

Tile features are frozen colour/texture statistics (``tile_features``): mean/std of the
haematoxylin, eosin and DAB channels (scikit-image's Ruifrok–Johnston deconvolution) and of the
grey-level gradient, over the whole patch and over PCam's labelled central 32x32 px. They need no
weights, so the demo runs offline; a foundation encoder's features would replace them in real use.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import require

CENTRE = slice(32, 64)  # PCam's label refers to the central 32x32 px of the 96 px patch


def tile_features(tiles: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 16) float32 stain/texture statistics (whole patch and centre)."""
    from scipy import ndimage
    from skimage.color import rgb2hed

    out = []
    for tile in tiles:
        hed = rgb2hed(tile)
        grey = tile.astype(np.float32).mean(-1) / 255.0
        grad = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
        stats = []
        for region in (np.s_[:, :], np.s_[CENTRE, CENTRE]):
            channels = [hed[region][..., k] for k in range(3)] + [grad[region]]
            stats += [float(c.mean()) for c in channels] + [float(c.std()) for c in channels]
        out.append(stats)
    return np.asarray(out, np.float32)


def pcam_bags(pcam: Path, n_bags: int = 200, bag_size: int = 16, seed: int = 0, split: str = "train"):
    """Returns (tiles (B, n, 96, 96, 3) uint8, tumour flags (B, n) bool, bag labels (B,) int)."""
    from PIL import Image

    require(n_bags >= 10 and n_bags % 2 == 0, f"--bags must be an even number >= 10, got {n_bags}")
    require(4 <= bag_size <= 64, f"--bag-size must be within 4..64, got {bag_size}")
    normal = sorted((pcam / split / "0").glob("*.jpg"))
    tumour = sorted((pcam / split / "1").glob("*.jpg"))
    need_normal = n_bags * bag_size
    require(len(normal) >= need_normal and len(tumour) >= n_bags * 2,
            f"{pcam / split} has {len(normal)} normal / {len(tumour)} tumour patches; {n_bags} bags of {bag_size} "
            f"need {need_normal} normal patches: use fewer --bags or a smaller --bag-size")
    rng = np.random.default_rng(seed)
    normal_pool = list(rng.permutation(len(normal)))
    tumour_pool = list(rng.permutation(len(tumour)))
    labels = np.array([1, 0] * (n_bags // 2))
    tiles, flags = [], []
    for label in labels:
        k = int(rng.integers(1, 5)) if label else 0
        paths = [tumour[tumour_pool.pop()] for _ in range(k)] + [normal[normal_pool.pop()] for _ in range(bag_size - k)]
        order = rng.permutation(bag_size)
        tiles.append(np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in order]))
        flags.append(order < k)
    return np.stack(tiles), np.stack(flags), labels


def run_pcam_mil(out, *, pcam=None, spec=None, n_bags: int = 200, bag_size: int = 16, folds: int = 5, seeds=(0,),
                 report: bool = True) -> dict:
    """Bag classification with ABMIL/TransMIL, k-fold by bag; report with an attention heat map."""
    from .crossval import HeadSpec, classification_cv
    from .report import attention_plot
    from .run import FORMAT, _finish, _progress
    from .splits import patient_folds

    spec = spec or HeadSpec(head="abmil", loss="ce")
    spec.loss = "ce"
    if pcam is None:
        from ..settings import sample_data_dir

        root = sample_data_dir()
        require(root is not None, "no --pcam folder given and no sample data found (set MUPD_SAMPLE_DATA)")
        pcam = root / "pcam"
    pcam = Path(pcam)
    require((pcam / "train" / "0").is_dir(), f"{pcam} is not a PCam folder (expected train/0 and train/1 with .jpg patches)")
    start = time.perf_counter()
    tiles, flags, labels = pcam_bags(pcam, n_bags, bag_size, seed=0)
    x = tile_features(tiles.reshape(-1, *tiles.shape[2:])).reshape(n_bags, bag_size, -1)
    x = (x - x.reshape(-1, x.shape[-1]).mean(0)) / (x.reshape(-1, x.shape[-1]).std(0) + 1e-6)  # unsupervised, label-free
    mask = np.ones(x.shape[:2], bool)
    bag_ids = np.array([f"bag{i:04d}" for i in range(n_bags)])
    split = patient_folds(bag_ids, labels, folds, seed=0)
    shown, hits = {}, []

    def look(fold, seed, model):
        import torch

        att = model.attention(torch.as_tensor(x[fold.test]), torch.as_tensor(mask[fold.test]))
        if att is None:
            return
        for row, a in zip(fold.test, att.numpy()):
            if labels[row]:
                hits.append(bool(flags[row][int(a.argmax())]))
                shown.setdefault("bag", (row, a))

    with _progress(len(split) * len(seeds), f"pcam bags {spec.head}") as bar:
        pred = classification_cv(x.astype(np.float32), labels, 2, bag_ids, split, spec, seeds, mask=mask,
                                 progress=bar, on_fit=look)
    summary = {"format": FORMAT, "task": "classification", "classes": ["normal", "tumour"],
               "title": f"PCam bags ({n_bags} x {bag_size} tiles) -> {spec.head}",
               "protocol": f"{folds}-fold CV by bag; a positive bag holds 1-4 tumour patches among {bag_size}; frozen "
                           "tile features = stain/texture statistics (no pretrained encoder); 95% CI = t over folds.",
               "config": {"pcam": str(pcam), "head": spec.head, "bags": n_bags, "bag_size": bag_size,
                          "fit": spec.fit.to_dict(), "folds": folds, "seeds": list(seeds)},
               "top_attention_is_tumour": float(np.mean(hits)) if hits else None,
               "seconds": round(time.perf_counter() - start, 1)}
    summary = _finish(out, pred, summary, report)
    if report and "bag" in shown:
        row, a = shown["bag"]
        name = attention_plot(tiles[row], a, Path(out) / "attention.png",
                              f"ABMIL attention, test bag {row}; * = tumour tile (PCam label)", marked=flags[row])
        from .report import write_report

        extra = [("ROC curves", "roc.png"), ("confusion matrix (first seed)", "confusion.png"),
                 ("ABMIL attention over a positive test bag's tiles", name)]
        write_report(Path(out), summary, extra)
    return summary
