"""The evaluation job behind ``mupd evaluate`` and ``mupd.metrics.evaluate``.

check everything cheap first (``checks.plan_evaluation``: paths, image headers, counts, labels,
extractor) -> real / fake -> (images, features) -> the requested metrics -> ``OUT/metrics.json`` +
``OUT/report.html``. Images of different sizes are resized to a common size by a stated rule
(recorded under ``image_size``). Features are cached by content (``metrics.cache``): the real set's
in the user cache (``$MUPD_CACHE`` or ``~/.cache/mupd``), so several generated sets compared with one
real set extract its features once; the generated set's in ``OUT/features/``. A ``.npz`` feature
file (``features``, ``extractor``, ``preprocessing``) may stand in for an image set.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MupdError, require
from .bootstrap import DEFAULT_RESAMPLES

DEFAULT_MIN_SAMPLES = 50  # = distribution.DEFAULT_MIN_SAMPLES; not imported, so input errors come before torch loads

ALL_METRICS = ("fid", "kid", "prdc", "cells", "fewshot", "retrieval", "similarity")
DEFAULT_METRICS = ("fid", "kid", "prdc", "cells")


@dataclass
class FeatureSet:
    """Features of one side plus everything needed to check the two sides are comparable."""

    features: np.ndarray
    extractor: str
    preprocessing: dict
    images: object | None = None  # ImageSet when read from images
    labels: list | None = None
    paths: list | None = None


def load_feature_file(path: Path) -> FeatureSet:
    try:
        with np.load(path, allow_pickle=False) as data:
            features = np.asarray(data["features"], np.float64)
            extractor = str(data["extractor"])
            preprocessing = json.loads(str(data["preprocessing"])) if "preprocessing" in data else {}
            labels = [str(x) for x in data["labels"]] if "labels" in data else None
    except (OSError, ValueError, KeyError) as exc:
        raise MupdError(f"{path} is not a feature file with 'features' and 'extractor' arrays ({exc})") from None
    return FeatureSet(features, extractor, preprocessing, None, labels)


def save_feature_file(path: Path, fs: FeatureSet, key: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, features=fs.features, extractor=np.array(fs.extractor), preprocessing=np.array(json.dumps(fs.preprocessing)),
             key=np.array(key), labels=np.array([str(x) for x in (fs.labels or [])]))
    os.replace(tmp, path)


def _side(source, name: str, *, extractor, cache_dir: Path | None, max_images, image_size, batch_size, progress, need_features):
    """One set's images and features; ``cache_dir`` None = the user cache (content-keyed either way)."""
    from .cache import content_key, load_cached, store_cached
    from .images import load_image_set

    source_path = Path(source)
    if source_path.suffix == ".npz":
        require(source_path.exists(), f"{source_path} does not exist")
        return load_feature_file(source_path)
    images = load_image_set(source_path, max_images=max_images, image_size=image_size, progress=progress)
    fs = FeatureSet(np.zeros((len(images), 0)), "none", images.preprocessing(), images, images.labels, images.paths)
    if not need_features:
        return fs
    preprocessing = {"images": images.preprocessing(), "extractor": extractor.preprocessing}
    key = content_key(images.paths, extractor.describe(), preprocessing)
    features = load_cached(key, cache_dir)
    if features is None:
        features = extractor.extract(images.images, batch_size=batch_size, progress=progress, desc=f"{name} features")
        store_cached(key, features, cache_dir)
    return FeatureSet(features, extractor.name, preprocessing, images, images.labels, images.paths)


def check_comparable(real: FeatureSet, fake: FeatureSet) -> None:
    """Refuse to compare sets that went through different extractors or preprocessing."""
    if real.extractor != fake.extractor:
        raise MupdError(f"real features come from '{real.extractor}' but generated from '{fake.extractor}'; "
                        "distances are only meaningful in one feature space: re-extract both with the same --features")
    if real.images is not None and fake.images is not None and real.images.size != fake.images.size:
        raise MupdError(f"real images are {real.images.size[1]}x{real.images.size[0]} px but generated are "
                        f"{fake.images.size[1]}x{fake.images.size[0]}; pass --image-size PX so both are resized the same way")
    rp, fp = real.preprocessing.get("extractor"), fake.preprocessing.get("extractor")
    if rp is not None and fp is not None and rp != fp:
        raise MupdError(f"real and generated features were preprocessed differently ({rp} vs {fp}); re-extract both")


def _labels_array(labels) -> np.ndarray | None:
    if not labels or any(label in (None, "") for label in labels):
        return None
    return np.asarray([str(x) for x in labels])


def evaluate(real, fake, out=None, *, metrics=DEFAULT_METRICS, features=None, max_images: int | None = None,
             image_size: int | None = None, min_samples: int = DEFAULT_MIN_SAMPLES, n_resamples: int = DEFAULT_RESAMPLES,
             batch_size: int = 50, nucleus_diameter: float = 10.0, cell_types: int = 4, shots=(1, 5, 10), seeds: int = 5,
             seed: int = 0, progress: bool = True, report: bool = True, extractor_kwargs: dict | None = None) -> dict:
    """Evaluate generated images ``fake`` against ``real``; returns the metrics dict (also written to
    ``out/metrics.json`` with ``out/report.html`` when ``out`` is given)."""
    from .checks import FEATURE_METRICS, plan_evaluation

    metrics = tuple(m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip())
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    require(not unknown, f"unknown metric(s) {unknown}; choose from {', '.join(ALL_METRICS)}")
    started = time.time()
    out = Path(out) if out is not None else None
    plan = plan_evaluation(real, fake, out, metrics=metrics, features=features, max_images=max_images,
                           image_size=image_size, min_samples=min_samples, batch_size=batch_size)
    need_features = bool(set(metrics) & FEATURE_METRICS)
    from .features import build_extractor

    extractor = build_extractor(features, **(extractor_kwargs or {})) if need_features else None
    side = dict(extractor=extractor, max_images=max_images, image_size=plan.image_size, batch_size=batch_size,
                progress=progress, need_features=need_features)
    real_set = _side(real, "real", cache_dir=None, **side)
    fake_set = _side(fake, "fake", cache_dir=out / "features" if out else None, **side)
    if need_features:
        check_comparable(real_set, fake_set)
    elif real_set.images is not None and fake_set.images is not None and real_set.images.size != fake_set.images.size:
        check_comparable(real_set, fake_set)
    result: dict = {
        "mupd_metrics_version": 1,
        "real": {"source": str(real), "n": int(len(real_set.features))},
        "fake": {"source": str(fake), "n": int(len(fake_set.features))},
        "metrics_requested": list(metrics),
        "image_size": plan.size_record,
        "bootstrap": {"resamples": n_resamples, "confidence": 0.95, "over": "images (fid/kid: each set resampled "
                      "with replacement, interval re-centred on the full-sample value; prdc/cells: per-image values)"},
        "warnings": [],
    }
    if extractor is not None:
        result["feature_extractor"] = {**extractor.describe(), "image_preprocessing": real_set.preprocessing.get("images")}
        if extractor.warning:
            result["warnings"].append(extractor.warning)
            warnings.warn(extractor.warning, stacklevel=2)
    if fake_set.images is not None:
        from .images import summarise_metadata

        result["sampler"] = summarise_metadata(fake_set.images.metadata)
    _run_metrics(result, metrics, real_set, fake_set, min_samples=min_samples, n_resamples=n_resamples, seed=seed,
                 nucleus_diameter=nucleus_diameter, cell_types=cell_types, shots=shots, seeds=seeds, progress=progress)
    cells_data = result.pop("_cells", None)
    result["seconds"] = round(time.time() - started, 1)
    if out is not None:
        from ..checkpoint import write_json

        out.mkdir(parents=True, exist_ok=True)
        if report:
            from .report import write_report

            result["report"] = str(write_report(out, result, real_set, fake_set, cells_data))
        write_json(out / "metrics.json", result)
    return result


def _run_metrics(result, metrics, real_set, fake_set, *, min_samples, n_resamples, seed, nucleus_diameter, cell_types,
                 shots, seeds, progress) -> None:
    from .distribution import check_feature_sets, fid_kid, prdc

    rf, ff = real_set.features, fake_set.features
    if "fid" in metrics or "kid" in metrics:
        check_feature_sets(rf, ff, min_samples=min_samples, what="FID/KID")
        dist = fid_kid(rf, ff, min_samples=min_samples, n_resamples=n_resamples, seed=seed, progress=progress)
        for name in ("fid", "kid"):
            if name in metrics:
                result[name] = dist[name]
    if "prdc" in metrics:
        result["prdc"] = prdc(rf, ff, n_resamples=n_resamples, seed=seed)
    if "cells" in metrics:
        require(real_set.images is not None and fake_set.images is not None, "the cells metric needs images, not feature files")
        from .cells import NucleusSegmenter, analyse_tiles, compare_populations

        segmenter = NucleusSegmenter(nucleus_diameter=nucleus_diameter)
        real_cells = analyse_tiles(real_set.images.images, segmenter, progress=progress, desc="nuclei (real)")
        fake_cells = analyse_tiles(fake_set.images.images, segmenter, progress=progress, desc="nuclei (fake)")
        cells = compare_populations(real_cells, fake_cells, n_types=cell_types, n_resamples=n_resamples, seed=seed)
        cells["nucleus_diameter_px"] = nucleus_diameter
        result["cells"] = cells
        result["_cells"] = (real_cells, fake_cells)  # for the report's plots; dropped before writing JSON
    real_labels, fake_labels = _labels_array(real_set.labels), _labels_array(fake_set.labels)
    if "fewshot" in metrics:
        require(real_labels is not None, "few-shot evaluation needs labelled real images (class sub-folders or a 'label' column)")
        from .fewshot import few_shot

        rng = np.random.default_rng(seed)
        order = rng.permutation(len(rf))
        pool, test = order[: len(rf) // 2], order[len(rf) // 2 :]  # half the real set is the shot pool, half the test set
        kwargs = {}
        if fake_labels is not None and set(fake_labels) <= set(real_labels):
            kwargs = dict(synthetic_features=ff, synthetic_labels=fake_labels)
        else:
            result["warnings"].append("few-shot: generated images carry no class labels matching the real ones; real-only probes")
        shots_ok = [k for k in shots if all((real_labels[pool] == c).sum() >= k for c in np.unique(real_labels))]
        result["fewshot"] = few_shot(rf[pool], real_labels[pool], rf[test], real_labels[test], shots=shots_ok,
                                     seeds=range(seeds), progress=progress, **kwargs)
    if "retrieval" in metrics:
        require(real_labels is not None and fake_labels is not None,
                "retrieval needs class labels on both sets (class sub-folders or a 'label' column)")
        from .retrieval import recall_at_k

        result["retrieval"] = {"generated_to_real": recall_at_k(ff, rf, query_labels=fake_labels, gallery_labels=real_labels,
                                                                 n_resamples=n_resamples),
                               "real_to_real": recall_at_k(rf, rf, query_labels=real_labels, gallery_labels=real_labels,
                                                           exclude_self=True, n_resamples=n_resamples)}
    if "similarity" in metrics:
        require(len(rf) == len(ff), f"similarity pairs generated image i with reference i: got {len(ff)} generated "
                f"and {len(rf)} references (give equal, matching sets; they are paired in sorted path order)")
        from .similarity import image_similarity

        result["similarity"] = {**image_similarity(ff, rf, n_resamples=n_resamples), "pairing": "sorted path order"}
