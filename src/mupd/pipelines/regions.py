"""The tiled image-to-image loop shared by ``stain`` and ``translate``.

A source region of any size (>= 8 px) is cut into overlapping tiles of the model's size, each tile
is translated, and the outputs are blended with raised-cosine weights (``tiles.tiled_apply``).
Modes: ``readout`` / ``sample`` (paired fine-tunes: the source latents are extra input channels) and
``sdedit`` (unpaired: the source encoded by the target autoencoder, noised to t = strength and
integrated back by the target-domain model).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import require
from .inputs import image_to_tensor, load_image
from .options import check_mode_options, resolve_seed
from .pngmeta import sha256_of
from .sdedit import noise_to, partial_steps, sample_from
from .tiles import tiled_apply

@torch.no_grad()
def translate_region(pipe, image: Any, *, mode: str, steps: int, sampler: str, seed: int | None,
                     tile: int | None, overlap: int | None, batch_size: int, text: str | None,
                     guidance, output_type: str, progress: bool, task: str, strength: float | None = None,
                     reference: bool = False, scales: dict | None = None):
    """The shared tiled image-to-image loop of ``stain`` and ``translate``.

    ``mode``: ``readout``/``sample`` (source latents as extra input channels) or ``sdedit``
    (unpaired: the source encoded by the target autoencoder, noised to t = ``strength`` and
    integrated back to t = 0 by the target-domain model).
    """
    strength = check_mode_options(mode, guidance=guidance, steps=steps, sampler=sampler, strength=strength)
    seed = resolve_seed(seed)
    source = load_image(image, what="source image")
    tile = int(tile or pipe.image_size)
    overlap = int(tile // 4 if overlap is None else overlap)
    require(tile == pipe.image_size, f"tile must equal the model's image size ({pipe.image_size} px); got {tile}")
    conditions, records, _ = pipe.encode_conditions(1, text=text)
    guidance = pipe.check_guidance(guidance, conditions)
    if reference and "image" in pipe.modalities and "image" in pipe.encoders:
        conditions_present = {**conditions, "image": True}  # the source tiles feed the reference stream
    else:
        conditions_present = conditions
    scales = pipe.check_scales(scales, conditions_present)
    counter = {"tiles": 0}

    def run_tiles(tiles: torch.Tensor) -> torch.Tensor:
        b = tiles.shape[0]
        first = counter["tiles"]
        counter["tiles"] += b
        tile_seeds = [seed + first + i for i in range(b)]
        cond = {m: tuple(x.expand(b, *x.shape[1:]) for x in c) if isinstance(c, tuple) else c.expand(b, *c.shape[1:])
                for m, c in conditions.items()}
        if reference:
            cond.update(_reference_tokens(pipe, tiles))
        if mode == "sdedit":
            x0 = pipe.encode_images(tiles)
            x_t = noise_to(x0, pipe.noise(tile_seeds, channels=x0.shape[1]), strength)
            latents = sample_from(pipe, x_t, strength, cond, steps=steps, sampler=sampler, guidance=guidance,
                                  scales=scales, generator=torch.Generator(device=pipe.device).manual_seed(seed + first))
        else:
            extra = pipe.encode_images(tiles, source=True)
            shape = (b, pipe.latent_channels, extra.shape[-2], extra.shape[-1])
            if mode == "readout":
                from ..flow import readout

                latents = readout(pipe.model, cond, extra, shape, scales=scales)
            else:
                from ..flow import sample

                latents = sample(pipe.model, pipe.noise(tile_seeds), cond, method=sampler, steps=steps,
                                 guidance=guidance, scales=scales, extra_input=extra,
                                 generator=torch.Generator(device=pipe.device).manual_seed(seed + first))
        return pipe.decode(latents)

    pixels = image_to_tensor([source])[0].to(pipe.device)
    result = tiled_apply(pixels, run_tiles, tile=tile, overlap=overlap, batch_size=batch_size, progress=progress)
    record = dict(records[0])
    record["source"] = {"source": str(image) if isinstance(image, (str, os.PathLike)) else None,
                        "sha256": sha256_of(source)[:16], "size": list(source.size)}
    used_sampler = "readout" if mode == "readout" else sampler
    params = pipe.parameters([record], [seed], sampler=used_sampler, steps=1 if mode == "readout" else steps,
                             guidance=guidance, batch_seed=seed, task=task, tile=tile, overlap=overlap,
                             strength=strength, mode=mode, scales=scales,
                             steps_run=partial_steps(strength, steps, sampler) if mode == "sdedit" else None)
    return pipe.package(result[None], params, output_type)


def _reference_tokens(pipe, tiles: torch.Tensor) -> dict:
    """Reference-image stream from the source tiles themselves (structure hint for 'translate')."""
    if "image" not in pipe.modalities or "image" not in pipe.encoders:
        return {}
    uint8 = ((tiles.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return {"image": pipe.encoders["image"].encode(uint8)}
