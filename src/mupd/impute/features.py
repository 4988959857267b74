"""Spot crops -> feature vectors: raw pixels, an untrained encoder, or any image encoder (a registry
encoder such as ``mupd-aligned``, UNI, ...). Features are read without gradients, in batches."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import require

PIXEL_SIDE = 16  # raw-pixel baseline: crops downsampled to 16x16x3 = 768 values


def as_uint8_batch(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 crops -> (N, 3, S, S) uint8 tensor (the encoders' batch format)."""
    images = np.asarray(images)
    require(images.ndim == 4 and images.shape[-1] == 3 and images.dtype == np.uint8,
            f"spot crops must be (N, S, S, 3) uint8, got {images.shape} {images.dtype}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def pixel_features(images: np.ndarray, side: int = PIXEL_SIDE) -> np.ndarray:
    """The raw-pixel baseline: area-downsampled RGB in [0, 1], flattened."""
    x = as_uint8_batch(images).float() / 255.0
    return F.adaptive_avg_pool2d(x, side).flatten(1).numpy()


def untrained_encoder(image_size: int = 64, seed: int = 0):
    """The same CNN class as the aligned image tower, randomly initialised (the 'untrained encoder' baseline)."""
    from ..align.towers import SmallImageTower

    torch.manual_seed(seed)
    return SmallImageTower(128, 128, image_size).eval().requires_grad_(False)


def registry_encoder(settings):
    """The frozen registry image encoder named in the run settings (``encoder``, ``encoder_path``)."""
    from ..encoders import registry

    kwargs = {"path": settings.encoder_path} if settings.encoder_path else {}
    return registry.build("image", settings.encoder, **kwargs).eval()


@torch.no_grad()
def encoder_features(encoder, images: np.ndarray, batch_size: int = 128, pooled_tokens: bool = True) -> np.ndarray:
    """Pooled tokens (``pooled_tokens``) or the encoder's ``embed`` vector, for every crop."""
    encoder.eval()
    batch = as_uint8_batch(images)
    out = []
    for i in range(0, len(batch), batch_size):
        chunk = batch[i: i + batch_size].to(encoder.device)
        if pooled_tokens:
            tokens, mask = encoder.encode(chunk)
            w = mask.float().unsqueeze(-1)
            out.append(((tokens * w).sum(1) / w.sum(1).clamp_min(1)).float().cpu())
        else:
            out.append(encoder.embed(chunk).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)
