"""Safe image reading: every failure becomes a ``MupdError`` naming the file and the fix.

``load_rgb`` accepts what a ``Record.image`` may hold (a path, a PIL image, a uint8 array) and
returns an RGB PIL image; ``to_tensor`` turns a batch into the [-1, 1] float layout the VAE reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import MupdError

# Large whole-slide regions are legitimate here; PIL's bomb check would refuse a 9k x 9k H&E.
_MAX_PIXELS = 40_000 * 40_000


def read_image(path: str | os.PathLike, mode: str = "RGB"):
    """Open an image file fully (decode errors surface here, not later) and convert it to ``mode``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise MupdError(f"image {path} does not exist; check the path (or the manifest row that names it)")
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, _MAX_PIXELS)
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MupdError(f"image {path} could not be decoded ({type(exc).__name__}: {exc}); the file is "
                        "corrupt or not an image: replace it or remove its row") from None


def load_rgb(image: Any, *, what: str = "image"):
    """A path / PIL image / (H, W, 3) uint8 array -> RGB PIL image."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise MupdError(f"{what}: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
        return Image.fromarray(image[..., :3])
    raise MupdError(f"{what}: expected a path, a PIL image or a uint8 array, got {type(image).__name__}")


def resize_square(image, size: int | None):
    """Resize to ``size`` x ``size`` (bicubic) unless it already is; None keeps the image as is."""
    from PIL import Image

    if size is None or image.size == (size, size):
        return image
    return image.resize((size, size), Image.BICUBIC)


def to_tensor(images: Sequence[Any], size: int | None = None, *, what: str = "image"):
    """Images -> float tensor (B, 3, S, S) in [-1, 1] (the VAE's input range)."""
    import torch

    arrays = []
    for i, im in enumerate(images):
        if isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] > 4:
            arrays.append(_resize_stack(im, size))  # multi-channel target (e.g. stacked stain panels)
            continue
        pil = resize_square(load_rgb(im, what=f"{what} {i}"), size)
        arrays.append(np.asarray(pil, dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise MupdError(f"{what}s have different sizes {sorted(shapes)[:3]}; pass size= to resize them to one")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


def _resize_stack(stack: np.ndarray, size: int | None) -> np.ndarray:
    from PIL import Image

    if size is None or stack.shape[:2] == (size, size):
        return stack.astype(np.uint8)
    planes = [np.asarray(Image.fromarray(stack[..., c]).resize((size, size), Image.BICUBIC)) for c in range(stack.shape[2])]
    return np.stack(planes, axis=2)


def to_uint8(images) -> np.ndarray:
    """A (B, 3, H, W) tensor in [-1, 1] -> (B, H, W, 3) uint8 array."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to("cpu")
    return x.permute(0, 2, 3, 1).numpy().astype(np.uint8)
