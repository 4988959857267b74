"""Preview grids: one labelled row per condition, sampled with ``mupd.flow.sample`` and decoded
by the VAE. Used during training (``previews/<images>.png``) and by ``mupd demo`` (samples.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def labelled_grid(rows: list[tuple[str, np.ndarray]], *, pad: int = 2, label_width: int = 0, scale: int = 1):
    """rows: (label, uint8 (K, H, W, 3)) -> PIL image, label text left of each row."""
    from PIL import Image, ImageDraw

    h, w = rows[0][1].shape[1:3]
    h, w = h * scale, w * scale
    cols = max(len(images) for _, images in rows)
    if not label_width:
        label_width = max(8 + 6 * max(len(label) for label, _ in rows), 16)
    canvas = Image.new("RGB", (label_width + cols * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        y = pad + r * (h + pad)
        draw.text((4, y + h // 2 - 5), label, fill="black")
        for c, image in enumerate(images):
            tile = Image.fromarray(image)
            if scale != 1:
                tile = tile.resize((w, h), Image.NEAREST)
            canvas.paste(tile, (label_width + pad + c * (w + pad), y))
    return canvas


@torch.no_grad()
def sample_images(model, vae, conditions: dict, n: int, latent_shape: tuple[int, ...], *, method: str, steps: int,
                  guidance, seed: int, extra_input=None, device=None) -> np.ndarray:
    """n images (uint8 (n, H, W, 3)) for one batch of conditions, deterministic in ``seed``."""
    from ..data.images import to_uint8
    from ..flow import sample

    device = device or next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *latent_shape), generator=g).to(device)
    was_training = model.training
    model.eval()
    latents = sample(model, noise, conditions, method=method, steps=steps, guidance=guidance, extra_input=extra_input,
                     generator=torch.Generator(device=noise.device).manual_seed(seed + 1))
    model.train(was_training)
    return to_uint8(vae.decode(latents.float()))


def save_png(image, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp)
    tmp.replace(path)
    return path
