"""Nuclei on H&E (and IHC haematoxylin): segmentation, morphology, cell types, and how far the
generated tiles' cell populations are from the real ones.

Default segmenter: colour deconvolution (``skimage.color.rgb2hed``) -> haematoxylin channel ->
Gaussian smoothing -> Otsu threshold -> hole filling / small-object removal -> distance-transform
watershed to split touching nuclei. ``read_label_mask`` adapts an external segmenter's output
(an instance map, or a binary mask that is split into connected components).
Distances: POT's exact optimal transport (``ot.emd2``) between standardised per-nucleus feature
distributions, the 1-D Wasserstein distance of per-tile nucleus counts, and the total-variation
distance between cell-type proportions (the Wasserstein distance under the 0/1 metric on types).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import MupdError, require
from .bootstrap import run_single_threaded

MORPHOLOGY = ("area", "eccentricity", "solidity")
COLOUR = ("mean_r", "mean_g", "mean_b", "mean_hematoxylin")
FEATURES = MORPHOLOGY + COLOUR


@dataclass
class NucleusSegmenter:
    """Haematoxylin threshold + watershed. Sizes are in pixels at the image's own resolution:
    ``nucleus_diameter`` is a typical nucleus (about 7 um; ~28 px at 0.25 um/px, ~9 px at 0.78 um/px)."""

    nucleus_diameter: float = 12.0
    threshold: float | None = None  # on the haematoxylin channel; None = Otsu per image
    min_threshold: float = 0.02  # floor for Otsu: on a nucleus-free tile (fat, lumen) Otsu splits noise
    sigma: float = 1.0
    min_area_fraction: float = 0.15  # of a typical nucleus' area
    split_depth: float = 0.3  # of the radius: how deep a neck must be to split touching nuclei

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return segment_nuclei(rgb, self)


def _check_rgb(rgb: np.ndarray, what: str = "image") -> np.ndarray:
    rgb = np.asarray(rgb)
    require(rgb.ndim == 3 and rgb.shape[-1] == 3, f"{what}: expected an (H,W,3) RGB array, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        require(np.isfinite(rgb).all(), f"{what}: contains NaN/inf")
        rgb = np.clip(rgb * 255.0 if rgb.max() <= 1.0 else rgb, 0, 255).astype(np.uint8)
    return rgb


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The haematoxylin optical density (H of ``rgb2hed``)."""
    from skimage.color import rgb2hed

    return rgb2hed(_check_rgb(rgb))[..., 0]


def segment_nuclei(rgb: np.ndarray, segmenter: NucleusSegmenter | None = None) -> np.ndarray:
    """Instance labels (H,W) int32, 0 = background, one positive id per nucleus."""
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import h_maxima, remove_small_objects
    from skimage.segmentation import watershed

    s = segmenter or NucleusSegmenter()
    h = gaussian(hematoxylin(rgb), sigma=s.sigma)
    if np.ptp(h) < 1e-6:
        return np.zeros(h.shape, np.int32)
    level = max(threshold_otsu(h), s.min_threshold) if s.threshold is None else s.threshold
    radius = s.nucleus_diameter / 2.0
    min_area = max(4, int(s.min_area_fraction * np.pi * radius**2))
    mask = ndi.binary_fill_holes(h > level)
    mask = ndi.binary_opening(mask, iterations=max(1, int(radius // 4)))
    mask = remove_small_objects(mask, max_size=min_area)
    if not mask.any():
        return np.zeros(h.shape, np.int32)
    distance = ndi.distance_transform_edt(mask)
    # one marker per dome of the distance map: h-maxima ignore the small bumps along an elongated
    # nucleus' ridge (plain local maxima would cut a spindle nucleus into pieces)
    markers, _ = ndi.label(h_maxima(distance, max(1.0, s.split_depth * radius)))
    labels = watershed(-distance, markers, mask=mask).astype(np.int32)
    # a component whose distance maximum was a plateau may have no peak: keep it as one nucleus
    unlabelled, n_extra = ndi.label(mask & (labels == 0))
    labels[unlabelled > 0] = unlabelled[unlabelled > 0] + labels.max()
    return _drop_small(labels, min_area)


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    sizes = np.bincount(labels.ravel())
    small = np.flatnonzero(sizes < min_area)
    labels = np.where(np.isin(labels, small[small > 0]), 0, labels)
    return relabel_sequential(labels)[0].astype(np.int32)


def read_label_mask(path: str | os.PathLike) -> np.ndarray:
    """An external segmenter's output as instance labels: ``.npy`` or an image (png/tif). A binary
    mask (two values) is split into connected components; an RGB instance map is read by colour."""
    path = Path(path)
    require(path.exists(), f"{path} does not exist; give the segmenter's label mask (.png/.tif/.npy)")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as im:
                array = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise MupdError(f"{path} is not a readable label mask ({exc})") from None
    if array.ndim == 3:  # colour-coded instances: one id per distinct colour, black = background
        flat = array[..., :3].reshape(-1, 3)
        _, ids = np.unique(flat, axis=0, return_inverse=True)
        background = np.flatnonzero((flat == 0).all(1))
        ids = ids.reshape(array.shape[:2]) + 1
        if background.size:
            ids[ids == ids.flat[background[0]]] = 0
        array = ids
    require(array.ndim == 2, f"{path}: a label mask must be 2-D (or an RGB instance map), got shape {array.shape}")
    if len(np.unique(array)) <= 2:
        return ndi.label(array > 0)[0].astype(np.int32)
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(array.astype(np.int64))[0].astype(np.int32)


def nuclei_features(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-nucleus features (n_nuclei, 7) in ``FEATURES`` order: area, eccentricity, solidity,
    mean R, G, B (0..255) and mean haematoxylin density."""
    from skimage.measure import regionprops_table

    rgb = _check_rgb(rgb)
    require(labels.shape == rgb.shape[:2], f"label mask {labels.shape} does not match image {rgb.shape[:2]}")
    if labels.max() == 0:
        return np.zeros((0, len(FEATURES)))
    intensity = np.concatenate([rgb.astype(np.float64), hematoxylin(rgb)[..., None]], axis=-1)
    props = regionprops_table(labels, intensity_image=intensity, properties=("area", "eccentricity", "solidity", "intensity_mean"))
    columns = [props["area"], props["eccentricity"], props["solidity"]] + [props[f"intensity_mean-{i}"] for i in range(4)]
    return np.stack(columns, axis=1).astype(np.float64)


@dataclass
class CellPopulation:
    """Nuclei of a set of tiles: one feature row per nucleus, and which tile it came from."""

    features: np.ndarray
    tile: np.ndarray
    n_tiles: int

    def counts(self) -> np.ndarray:
        return np.bincount(self.tile, minlength=self.n_tiles)


@run_single_threaded
def analyse_tiles(images, segmenter: NucleusSegmenter | None = None, *, masks=None, progress: bool = False,
                  desc: str = "nuclei") -> CellPopulation:
    """Segment and measure every tile; ``images`` is uint8 (N,3,H,W) (torch or numpy) or (N,H,W,3).
    ``masks`` (one label array or mask file per tile, e.g. from HoVer-Net/StarDist/Cellpose via
    ``read_label_mask``) replaces the built-in segmenter."""
    array = np.asarray(images)
    if array.ndim == 4 and array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    if masks is not None:
        require(len(masks) == len(array), f"{len(masks)} label masks for {len(array)} tiles; give one per tile")
    iterator = range(len(array))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=desc, unit="tile")
    rows, tiles = [], []
    for i in iterator:
        if masks is None:
            labels = segment_nuclei(array[i], segmenter)
        else:
            labels = masks[i] if isinstance(masks[i], np.ndarray) else read_label_mask(masks[i])
        f = nuclei_features(array[i], labels)
        rows.append(f)
        tiles.append(np.full(len(f), i))
    return CellPopulation(np.concatenate(rows) if rows else np.zeros((0, len(FEATURES))),
                          np.concatenate(tiles).astype(int) if tiles else np.zeros(0, int), len(array))


class CellTyper:
    """Cell types as k-means clusters of standardised nucleus features fitted on REAL nuclei, or a
    provided classifier (anything with ``predict(features) -> labels``)."""

    def __init__(self, n_types: int = 4, classifier=None, seed: int = 0):
        self.n_types, self.classifier, self.seed = n_types, classifier, seed
        self.mean = self.std = None

    def fit(self, features: np.ndarray) -> "CellTyper":
        if self.classifier is not None:
            return self
        from sklearn.cluster import KMeans

        require(len(features) >= self.n_types, f"cell typing needs at least {self.n_types} real nuclei, found {len(features)}")
        self.mean, self.std = features.mean(0), features.std(0) + 1e-8
        self.kmeans = KMeans(self.n_types, n_init=4, random_state=self.seed).fit((features - self.mean) / self.std)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0, int)
        if self.classifier is not None:
            return np.asarray(self.classifier.predict(features))
        require(self.mean is not None, "CellTyper.predict before fit: fit it on real nuclei first")
        return self.kmeans.predict((features - self.mean) / self.std)


def proportions(types: np.ndarray, n_types: int) -> np.ndarray:
    counts = np.bincount(np.asarray(types, int), minlength=n_types).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def feature_wasserstein(real: np.ndarray, fake: np.ndarray, *, max_points: int = 2000, seed: int = 0) -> float:
    """Exact OT cost (``ot.emd2``, Euclidean ground metric) between two nucleus-feature clouds,
    standardised by the real nuclei's statistics; each cloud subsampled to ``max_points``."""
    import ot

    require(len(real) > 0 and len(fake) > 0, "Wasserstein distance needs nuclei in both sets (none were found in one)")
    rng = np.random.default_rng(seed)
    real = real[rng.choice(len(real), max_points, replace=False)] if len(real) > max_points else real
    fake = fake[rng.choice(len(fake), max_points, replace=False)] if len(fake) > max_points else fake
    mean, std = real.mean(0), real.std(0) + 1e-8
    a, b = (real - mean) / std, (fake - mean) / std
    cost = ot.dist(a, b, metric="euclidean")
    return float(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost, numItermax=1_000_000))


@run_single_threaded
def compare_populations(real: CellPopulation, fake: CellPopulation, *, n_types: int = 4, typer: CellTyper | None = None,
                        n_resamples: int = 100, seed: int = 0) -> dict:
    """Cell statistics of generated vs real tiles: counts, OT distance of features, cell-type mix."""
    from scipy.stats import wasserstein_distance

    from .bootstrap import bootstrap_ci, mean_ci

    typer = (typer or CellTyper(n_types, seed=seed)).fit(real.features)
    k = typer.n_types
    real_p, fake_p = proportions(typer.predict(real.features), k), proportions(typer.predict(fake.features), k)
    per_feature = {name: float(wasserstein_distance(real.features[:, i], fake.features[:, i]))
                   for i, name in enumerate(FEATURES)} if len(real.features) and len(fake.features) else {}
    # exact OT is O(n^3): the interval comes from 20 resamples of 500-nucleus subsamples, shifted onto
    # the full (2000-nucleus) value, since smaller samples carry a larger finite-sample OT bias
    ot_distance = bootstrap_ci(lambda r, f: feature_wasserstein(r, f, max_points=500, seed=seed), real.features, fake.features,
                               n_resamples=min(n_resamples, 20), seed=seed)
    full = feature_wasserstein(real.features, fake.features, seed=seed)
    ot_distance.low, ot_distance.high = ot_distance.low - ot_distance.value + full, ot_distance.high - ot_distance.value + full
    ot_distance.value = full
    return {
        "nuclei_per_tile": {"real": mean_ci(real.counts(), n_resamples=n_resamples).to_dict(),
                            "generated": mean_ci(fake.counts(), n_resamples=n_resamples).to_dict(),
                            "wasserstein_1d": float(wasserstein_distance(real.counts(), fake.counts()))},
        "nuclei": {"real": int(len(real.features)), "generated": int(len(fake.features))},
        "feature_wasserstein_emd": {**ot_distance.to_dict(), "features": list(FEATURES), "standardised_by": "real nuclei"},
        "per_feature_wasserstein_1d": per_feature,
        "cell_types": {"method": "classifier" if typer.classifier is not None else f"k-means (k={k}) on real nuclei",
                       "real_proportions": real_p.tolist(), "generated_proportions": fake_p.tolist(),
                       "total_variation": float(0.5 * np.abs(real_p - fake_p).sum())},
        "segmenter": "rgb2hed haematoxylin + Otsu + distance-transform watershed",
    }
