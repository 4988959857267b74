"""Everything ``mupd evaluate`` can check before it loads a network or decodes a pixel.

Paths, image headers (size and mode, read without decoding), counts against ``--min-samples``,
labels for few-shot/retrieval, pairing for similarity, the feature extractor's availability and
feature files' extractors. Also the size rule: when the images of the two sets (or within one set)
differ in size and no ``--image-size`` is given, every image is resized (bicubic, square) to the
smallest side found in either set, so nothing is upsampled; the rule is printed in one line and
recorded in metrics.json.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import MupdError, require

FEATURE_METRICS = {"fid", "kid", "prdc", "fewshot", "retrieval", "similarity"}
SIZE_RULE = "smallest side in either set, bicubic, square (no upsampling)"


@dataclass
class SidePlan:
    source: Path
    is_features: bool
    n: int
    labels: list = field(default_factory=list)
    sizes: set = field(default_factory=set)
    extractor: str | None = None  # the extractor recorded in a feature file


@dataclass
class EvaluationPlan:
    real: SidePlan
    fake: SidePlan
    image_size: int | None
    size_record: dict
    extractor_name: str | None


def select(paths: list, labels: list, max_images: int | None, seed: int = 0):
    """The same fixed-seed subset ``metrics.images.load_image_set`` takes."""
    if max_images is not None and len(paths) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), size=max_images, replace=False))
        return [paths[i] for i in keep], [labels[i] for i in keep]
    return paths, labels


def _header_sizes(paths: list[Path], what: str) -> set:
    sizes, bad = set(), []
    for path in paths:
        try:
            with Image.open(path) as im:  # reads the header only
                if im.mode not in ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr", "I;16", "I", "F", "1"):
                    bad.append(f"{path} (mode {im.mode})")
                sizes.add(im.size)
        except (OSError, SyntaxError, UnidentifiedImageError, ValueError):
            bad.append(str(path))
    if bad:
        raise MupdError(f"{what}: {len(bad)} files are not readable images, first {bad[:3]}; remove or replace them")
    return sizes


def _feature_file(path: Path, what: str) -> SidePlan:
    require(path.exists(), f"--{what} {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            n, extractor = len(data["features"]), str(data["extractor"])
            labels = [str(x) for x in data["labels"]] if "labels" in data else []
    except (OSError, ValueError, KeyError) as exc:
        raise MupdError(f"{path} is not a feature file with 'features' and 'extractor' arrays ({exc})") from None
    return SidePlan(path, True, n, labels, set(), extractor)


def _list(source, what: str, max_images: int | None):
    """(path, paths, labels) of an image set, or the SidePlan of a feature file."""
    from .images import list_images

    path = Path(source)
    if path.suffix == ".npz":
        return _feature_file(path, what)
    return path, *select(*list_images(path), max_images)


def _extractor_name(features) -> str:
    from .features import build_extractor_check

    return build_extractor_check(features)


def _labelled(labels) -> bool:
    return bool(labels) and all(label not in (None, "") for label in labels)


def plan_evaluation(real, fake, out, *, metrics, features, max_images, image_size, min_samples, batch_size) -> EvaluationPlan:
    """Check everything cheap; raise one ``MupdError`` naming the problem. Returns the plan."""
    require(max_images is None or max_images >= 1, f"--max-images must be at least 1, not {max_images}")
    require(image_size is None or image_size >= 16, f"--image-size must be at least 16 px, not {image_size}")
    require(batch_size >= 1, f"--batch-size must be at least 1, not {batch_size}")
    if out is not None:
        require(not Path(out).is_file(), f"--out {out} is a file; give a folder")
    listed = {what: _list(source, what, max_images) for what, source in (("real", real), ("fake", fake))}
    plans = {what: item if isinstance(item, SidePlan) else SidePlan(item[0], False, len(item[1]), item[2])
             for what, item in listed.items()}
    real_plan, fake_plan = plans["real"], plans["fake"]
    metrics = set(metrics)
    if metrics & {"fid", "kid"}:
        for side in (real_plan, fake_plan):
            require(side.n >= min_samples, f"FID/KID need at least {min_samples} images per set; {side.source} gives "
                    f"{side.n}. Add images, or lower --min-samples (estimates below ~50 are unreliable)")
    if "similarity" in metrics:
        require(real_plan.n == fake_plan.n, f"similarity pairs generated image i with reference i: got {fake_plan.n} "
                f"generated and {real_plan.n} references (give equal, matching sets; paired in sorted path order)")
    if "fewshot" in metrics:
        require(_labelled(real_plan.labels), "few-shot evaluation needs labelled real images (class sub-folders or a 'label' column)")
    if "retrieval" in metrics:
        require(_labelled(real_plan.labels) and _labelled(fake_plan.labels),
                "retrieval needs class labels on both sets (class sub-folders or a 'label' column)")
    if "cells" in metrics:
        require(not (real_plan.is_features or fake_plan.is_features), "the cells metric needs images, not feature files")
    for what, item in listed.items():  # image headers (size, mode) once the cheaper checks passed
        if not isinstance(item, SidePlan):
            plans[what].sizes = _header_sizes(item[1], f"--{what} {item[0]}")
    name = _extractor_name(features) if metrics & FEATURE_METRICS else None
    for side, what in ((real_plan, "real"), (fake_plan, "generated")):
        if name is not None and side.is_features and features not in (None, "auto") and side.extractor != name:
            raise MupdError(f"{side.source} holds {what} features from '{side.extractor}' but --features is '{name}'; "
                            "distances are only meaningful in one feature space: re-extract with the same --features")
    size, record = _size_rule(real_plan, fake_plan, image_size)
    return EvaluationPlan(real_plan, fake_plan, size, record, name)


def _size_rule(real: SidePlan, fake: SidePlan, image_size: int | None) -> tuple[int | None, dict]:
    found = {"real": sorted(f"{w}x{h}" for w, h in real.sizes), "fake": sorted(f"{w}x{h}" for w, h in fake.sizes)}
    if image_size is not None:
        return image_size, {"px": image_size, "rule": "--image-size (bicubic, square)", "found": found}
    sizes = real.sizes | fake.sizes
    if len(sizes) <= 1:
        native = next(iter(sizes), None)
        return None, {"px": None if native is None else list(native), "rule": "native (all images one size)", "found": found}
    side = min(min(w, h) for w, h in sizes)
    print(f"mupd evaluate: image sizes differ (real {', '.join(found['real'])}; generated {', '.join(found['fake'])}): "
          f"resizing every image to {side}x{side} px ({SIZE_RULE}); pass --image-size PX to choose", file=sys.stderr)
    return side, {"px": side, "rule": SIZE_RULE, "found": found}
