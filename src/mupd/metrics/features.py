"""Feature extractors by name, for FID/KID/precision-recall and embedding similarities.

- ``inception``: the TF-ported Inception-v3 of torch-fidelity/torchmetrics (2048-d pool features),
  loaded from a local weights file only (``$MUPD_INCEPTION_WEIGHTS``, else torch hub's checkpoint
  cache, names ``pt_inception-2015-12-05-*.pth`` / ``weights-inception-2015-12-05-*.pth``), read with
  ``torch.load(weights_only=True)``. Never downloads.
- ``random-inception``: the same architecture, randomly initialised with a fixed seed. Clearly
  labelled: its values are only comparable between runs that used the same extractor.
- ``colour-stats``: 30 hand-made colour/stain statistics (RGB and ``rgb2hed`` densities: mean,
  std, 10/50/90th percentiles). No learning, instant; for smoke tests and quick checks only.
- any other name: an image encoder of ``mupd.encoders.registry`` (UNI, Virchow2, MUSK, our aligned
  encoder, ...) through its ``.embed(uint8 batch)``.

``default_extractor()`` is ``inception`` when its weights are on disk, else ``random-inception``.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import torch

from ..errors import MupdError

INCEPTION_PATTERNS = ("pt_inception-2015-12-05-*.pth", "weights-inception-2015-12-05-*.pth")
RANDOM_WARNING = (
    "features come from a randomly initialised Inception-v3 (fixed seed 0), not the pretrained network: "
    "values are NOT comparable with published FID/KID and only comparable between runs with the same extractor"
)


@dataclass
class FeatureExtractor:
    """A named function uint8 (B,3,H,W) -> float features (B,D), with what it did to the pixels."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    preprocessing: dict
    warning: str | None = None
    info: dict = field(default_factory=dict)
    module: torch.nn.Module | None = None  # the network behind ``fn``, when there is one

    def describe(self) -> dict:
        return {"name": self.name, "preprocessing": self.preprocessing, "warning": self.warning, **self.info}

    @torch.no_grad()
    def extract(self, images: torch.Tensor, *, batch_size: int = 50, progress: bool = False, desc: str = "features") -> np.ndarray:
        """Features (N,D) float64 of uint8 images (N,3,H,W), batch by batch with a progress bar."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise MupdError(f"feature extractor '{self.name}' expects uint8 images (N,3,H,W), got {tuple(images.shape)} {images.dtype}")
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"{desc} ({self.name})", unit="batch")
        out = [self.fn(images[s : s + batch_size]).detach().float().cpu().reshape(min(batch_size, len(images) - s), -1) for s in starts]
        features = torch.cat(out).double().numpy()
        if not np.isfinite(features).all():
            raise MupdError(f"feature extractor '{self.name}' produced NaN/inf features; check the images and the weights")
        return features


def find_inception_weights() -> Path | None:
    """The local Inception-v3 FID weights file, or None. ``$MUPD_INCEPTION_WEIGHTS`` may name the
    file or a folder holding it."""
    candidates: list[Path] = []
    env = os.environ.get("MUPD_INCEPTION_WEIGHTS")
    if env:
        path = Path(env)
        if path.is_file():
            return path
        if not path.is_dir():
            raise MupdError(f"$MUPD_INCEPTION_WEIGHTS={env} does not exist; point it at pt_inception-2015-12-05-*.pth")
        candidates.append(path)
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints")
    for folder in candidates:
        for pattern in INCEPTION_PATTERNS:
            hits = sorted(glob.glob(str(folder / pattern)))
            if hits:
                return Path(hits[0])
    return None


def _build_fidelity_inception(state_dict: dict | None, seed: int = 0) -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 without its download: we hand it the state dict
    (or, for ``None``, keep a fixed-seed random initialisation)."""
    try:
        from torch_fidelity import feature_extractor_inceptionv3 as tfi
    except ImportError:
        from ..errors import missing_extra

        raise missing_extra("torch-fidelity", "fidelity", "the Inception-v3 feature extractor") from None

    class _Inception(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state, strict=True, assign=False):  # called from __init__
            if state is None:
                return None
            return super().load_state_dict(state, strict=strict, assign=assign)

    with torch.random.fork_rng(devices=[]), mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: state_dict):
        torch.manual_seed(seed)
        model = _Inception("inception-v3-compat", ["2048"])
        if state_dict is None:
            _variance_preserving_init(model)
    return model.eval().requires_grad_(False)


def _variance_preserving_init(model: torch.nn.Module) -> None:
    # PyTorch's default conv init shrinks activations ~2x per layer; over Inception's ~40 layers the
    # pool features would underflow. He-normal keeps them O(1). BatchNorm stays the identity (eval).
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


def inception_extractor(weights: str | os.PathLike | None = None, *, random_init: bool = False) -> FeatureExtractor:
    preprocessing = {
        "input": "uint8 RGB",
        "resize": "bilinear to 299x299 (TF1-compatible, torch-fidelity)",
        "normalise": "(x - 128) / 128",
        "layer": "2048-d average pool",
    }
    if random_init:
        model = _build_fidelity_inception(None)
        return FeatureExtractor("random-inception", lambda x: model(x)[0], preprocessing, RANDOM_WARNING,
                                {"weights": "random, seed 0"}, model)
    path = Path(weights) if weights else find_inception_weights()
    if path is None:
        raise MupdError(
            "no local Inception-v3 FID weights: put pt_inception-2015-12-05-*.pth in $MUPD_INCEPTION_WEIGHTS "
            f"or {Path(torch.hub.get_dir()) / 'checkpoints'}, or use --features random-inception / an image encoder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a state dict, or a pickle with code
        raise MupdError(f"{path} is not a readable Inception-v3 state dict ({exc}); re-fetch the file") from None
    try:
        model = _build_fidelity_inception(state)
    except RuntimeError as exc:
        raise MupdError(f"{path} does not match torch-fidelity's Inception-v3 layout ({str(exc)[:200]})") from None
    return FeatureExtractor("inception", lambda x: model(x)[0], preprocessing, None, {"weights": str(path)}, model)


def encoder_extractor(name: str, **kwargs) -> FeatureExtractor:
    """An image encoder from ``mupd.encoders.registry`` used as a feature space (its ``embed``)."""
    try:
        from ..encoders import registry
    except ImportError as exc:
        raise MupdError(f"feature extractor '{name}' needs mupd.encoders, which failed to import ({exc})") from None
    encoder = registry.build("image", name, **kwargs)
    preprocessing = {"input": "uint8 RGB", "transform": f"{name}'s own"}
    pre = getattr(encoder, "preprocess", None)
    if pre is not None and hasattr(pre, "size"):  # mupd.encoders.image.ImagePreprocess
        preprocessing.update(resize=f"bilinear (antialiased) to {pre.size[0]}x{pre.size[1]}",
                             mean=[round(float(v), 4) for v in pre.mean.flatten()], std=[round(float(v), 4) for v in pre.std.flatten()])
    entry = None
    try:
        entry = registry.entry("image", name) if hasattr(registry, "entry") else None
    except Exception:  # registry API still settling; licence info is optional here
        entry = None
    info = {"kwargs": {k: str(v) for k, v in kwargs.items()}}
    if entry is not None and hasattr(entry, "licence"):
        info.update(licence=entry.licence, licence_base=getattr(entry, "base", "none"), commercial=entry.commercial)
    if hasattr(encoder, "eval"):
        encoder.eval()
    return FeatureExtractor(name, lambda x: torch.as_tensor(encoder.embed(x)), preprocessing, None, info,
                            encoder if isinstance(encoder, torch.nn.Module) else None)


def _colour_stats(images: torch.Tensor) -> torch.Tensor:
    from skimage.color import rgb2hed

    rows = []
    for im in images.permute(0, 2, 3, 1).numpy():
        channels = np.concatenate([im.reshape(-1, 3) / 255.0, rgb2hed(im).reshape(-1, 3)], axis=1)
        rows.append(np.concatenate([channels.mean(0), channels.std(0), *np.percentile(channels, [10, 50, 90], axis=0)]))
    return torch.from_numpy(np.asarray(rows))


def colour_stats_extractor() -> FeatureExtractor:
    return FeatureExtractor(
        "colour-stats", _colour_stats,
        {"input": "uint8 RGB, native size", "features": "mean, std, p10/p50/p90 of R,G,B and rgb2hed H,E,D (30-d)"},
        "colour-stats are low-level colour statistics, not a learned feature space: FID/KID on them only "
        "measure colour/stain distribution differences")


def default_extractor_name() -> str:
    return "inception" if find_inception_weights() is not None else "random-inception"


BUILT_IN = ("inception", "random-inception", "colour-stats")


def build_extractor_check(name: str | FeatureExtractor | None = None) -> str:
    """The extractor name ``build_extractor`` would build, checked without loading anything: the
    Inception weights are on disk, or the name is a registered image encoder."""
    if isinstance(name, FeatureExtractor):
        return name.name
    resolved = default_extractor_name() if name in (None, "auto") else name
    if resolved == "inception" and find_inception_weights() is None:
        raise MupdError(
            "no local Inception-v3 FID weights: put pt_inception-2015-12-05-*.pth in $MUPD_INCEPTION_WEIGHTS "
            f"or {Path(torch.hub.get_dir()) / 'checkpoints'}, or use --features random-inception / an image encoder")
    if resolved not in BUILT_IN:
        from ..encoders import registry

        if resolved not in registry.names("image"):
            raise MupdError(f"unknown feature extractor '{resolved}'; choose {', '.join(BUILT_IN)} or an image encoder: "
                            f"{', '.join(registry.names('image'))}")
    return resolved


def build_extractor(name: str | FeatureExtractor | None = None, **kwargs) -> FeatureExtractor:
    """By name: ``inception``, ``random-inception``, or an image-encoder registry name; ``None`` or
    ``auto`` = the pretrained Inception when on disk, else ``random-inception``. A ready
    ``FeatureExtractor`` (your own function) is returned as is."""
    if isinstance(name, FeatureExtractor):
        return name
    name = default_extractor_name() if name in (None, "auto") else name
    if name == "inception":
        return inception_extractor(kwargs.get("weights"))
    if name == "random-inception":
        return inception_extractor(random_init=True)
    if name == "colour-stats":
        return colour_stats_extractor()
    return encoder_extractor(name, **kwargs)
