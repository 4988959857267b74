"""The condition-encoder protocol shared by every modality, and the per-modality registries.

Every encoder is an ``nn.Module`` with

* ``modality``: "text", "image" or "rna";
* ``width``: the width D of the tokens it emits;
* ``encode(batch) -> (tokens (B, L, D) float, mask (B, L) bool)``, True = real token. These feed a
  cross-attention stream of the generator;
* ``embed(batch) -> (B, D)``: one pooled vector per sample (retrieval, metrics, alignment).

Batches: text = ``list[str]``; image = uint8 tensor (B, 3, H, W) or a list of PIL images;
rna = float tensor (B, G) already normalised by a ``GeneVocabulary``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MupdError, missing_extra
from ..registry import Registry

MODALITIES = ("text", "image", "rna")
REGISTRIES: dict[str, Registry] = {m: Registry(f"{m} encoder") for m in MODALITIES}


def register(modality: str, name: str, *, licence: str, commercial: bool, source: str = "", width=None, **meta):
    """Decorator registering an encoder factory under ``(modality, name)``.

    ``width`` is the output token width (an int, or a string such as "configurable" / "from the
    model config") so ``mupd info`` can list it without building anything.
    """
    return REGISTRIES[modality].register(
        name, licence=licence, commercial=commercial, source=source, width=width, modality=modality, **meta
    )


class ConditionEncoder(nn.Module):
    """Base class: subclasses implement ``encode``; ``embed`` defaults to a masked mean of tokens."""

    modality: str = ""
    width: int = 0

    def __init__(self):
        super().__init__()
        # A zero-size buffer so ``.device`` follows ``.to(device)`` even for weight-free encoders.
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def embed(self, batch) -> torch.Tensor:
        tokens, mask = self.encode(batch)
        return masked_mean(tokens, mask)

    def forward(self, batch):
        return self.encode(batch)

    def extra_repr(self) -> str:
        return f"modality={self.modality!r}, width={self.width}"


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens; a row with no real token gives zeros (not NaN)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------
# Input checks shared by adapters


def check_texts(batch) -> list[str]:
    if isinstance(batch, str):
        raise MupdError("a text batch must be a list of strings, not one string; wrap it: [text]")
    batch = list(batch)
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            raise MupdError(f"text batch item {i} is a {type(text).__name__}, not a str")
    if not batch:
        raise MupdError("the text batch is empty")
    return batch


def images_to_float(batch, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B,3,H,W) tensor / (B,H,W,3) array / list of PIL -> float (B,3,H,W) in [0,1]."""
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise MupdError("the image batch is empty")
        arrays = []
        for i, image in enumerate(batch):
            if hasattr(image, "convert"):  # PIL
                image = np.asarray(image.convert("RGB"))
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[-1] != 3:
                raise MupdError(f"image batch item {i} has shape {image.shape}; expected an RGB image (H, W, 3)")
            arrays.append(image)
        if len({a.shape for a in arrays}) != 1:
            raise MupdError(f"images in one batch differ in size ({sorted({a.shape for a in arrays})}); resize them first")
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    elif isinstance(batch, np.ndarray):
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise MupdError(f"an image array batch must be (B, H, W, 3); got {batch.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    if not isinstance(batch, torch.Tensor):
        raise MupdError(f"an image batch must be a uint8 tensor (B,3,H,W) or a list of PIL images, not {type(batch).__name__}")
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise MupdError(f"an image tensor batch must be (B, 3, H, W); got {tuple(batch.shape)}")
    if batch.dtype == torch.uint8:
        return batch.to(device).float() / 255.0
    if batch.is_floating_point():
        if not torch.isfinite(batch).all():
            raise MupdError("the image batch contains NaN or infinite values")
        if batch.min() < 0 or batch.max() > 1:
            raise MupdError("a float image batch must lie in [0, 1] (or pass uint8 pixels 0..255)")
        return batch.to(device).float()
    raise MupdError(f"image batch dtype {batch.dtype} not understood; pass uint8 pixels")


def check_expression(batch, num_genes: int | None, what: str = "rna batch") -> torch.Tensor:
    """A float (B, G) tensor with no NaN; G must match the vocabulary the encoder was built for."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, torch.Tensor):
        raise MupdError(f"{what} must be a float tensor (B, G) normalised by a GeneVocabulary, not {type(batch).__name__}")
    if batch.ndim != 2:
        raise MupdError(f"{what} must be 2-D (B, G); got shape {tuple(batch.shape)}")
    if num_genes is not None and batch.shape[1] != num_genes:
        raise MupdError(
            f"{what} has {batch.shape[1]} genes but the encoder was built for {num_genes}; "
            "transform it with the encoder's GeneVocabulary first"
        )
    batch = batch.float()
    if not torch.isfinite(batch).all():
        raise MupdError(f"{what} contains NaN or infinite values; impute or drop those samples first")
    return batch


# ----------------------------------------------------------------------------------------------
# Where weights come from


def require_package(module: str, extra: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise missing_extra(module, extra, what)


def require_external_package(module: str, pip_hint: str, what: str) -> None:
    """For packages outside mupd's extras (MUSK, CONCH): name the package and where it comes from."""
    if importlib.util.find_spec(module) is None:
        raise MupdError(f"{what} needs the package '{module}', which is not installed. Install it with: {pip_hint}")


HUB_PREFIXES = ("hub:", "hf-hub:")  # both name the Hugging Face hub explicitly; nothing else reaches it


def resolve_weights(path, *, what: str, hub_id: str | None = None, expected: str = "config.json and weights") -> str:
    """Return a local folder (as str) or an explicit hub id, normalised to ``hf-hub:ORG/NAME``
    (``hub:ORG/NAME`` and ``hf-hub:ORG/NAME`` are the same); never download implicitly.

    ``path=None`` is an error that says which folder is expected and how to opt into the hub; a
    path that does not exist is an error naming it (never retried as a hub id).
    """
    if path is None:
        hub = f" or path='hub:{hub_id}' to download it from the Hugging Face hub" if hub_id else ""
        raise MupdError(f"{what}: no weights given. Pass path=FOLDER (a local folder with {expected}){hub}")
    text = os.fspath(path)
    for prefix in HUB_PREFIXES:
        if text.startswith(prefix):
            require_hub_id(text[len(prefix):], what)
            return "hf-hub:" + text[len(prefix):]
    folder = Path(text)
    if not folder.is_dir():
        hint = f" (to download '{text}' from the hub, write hub:{text})" if text.count("/") == 1 and not text.startswith((".", "/")) else ""
        raise MupdError(f"{what}: weights folder {folder} does not exist; expected a folder with {expected}{hint}")
    return str(folder)


def require_hub_id(repo: str, what: str) -> None:
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise MupdError(f"{what}: hub id {repo!r} must look like ORG/NAME (e.g. hub:MahmoodLab/UNI)")
