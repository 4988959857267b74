"""Stain: a source-stained region (H&E, IHC) -> the target stain (IHC, multiplex IF channels).

The model is a fine-tune whose input holds the source image's latents as extra channels
(``extra_in_channels``; zero-initialised at the start of fine-tuning) and whose ``vae`` is the
target domain's autoencoder (3 channels for IHC, k channels for mIF). Two inference modes:

* ``"readout"``: one forward pass at t = 1 from a zero latent, ``x0 = -v(0, 1, c)`` — the
  posterior mean; deterministic and what dense targets (marker intensities) are scored with;
* ``"sample"``: integrate the flow from noise — sharper, stochastic texture.

Regions larger than the model's tile are processed as overlapping tiles blended with raised-cosine
weights (``tiles.tiled_apply``), so a whole field comes out without seams.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import require
from .base import check_sampler, resolve_seed
from .inputs import image_to_tensor, load_image
from .pngmeta import sha256_of
from .tiles import tiled_apply

METHODS = ("readout", "sample", "sdedit")


@torch.no_grad()
def stain(pipe, image: Any, *, method: str = "readout", steps: int = 20, sampler: str = "heun",
          seed: int | None = 0, tile: int | None = None, overlap: int | None = None, batch_size: int = 16,
          text: str | None = None, guidance: float | dict | None = None, output_type: str = "pil",
          progress: bool = False):
    """Translate one source image (any size >= 8 px) into the model's target stain."""
    require(pipe.source_channels > 0,
            f"{pipe.path} is a '{pipe.task}' model without source-image input channels; 'stain' needs a "
            "fine-tune with extra_in_channels (see configs/stain-*.yaml); for an unpaired domain use 'translate'")
    require(method in ("readout", "sample"), f"stain method must be 'readout' or 'sample', got {method!r}")
    return translate_region(pipe, image, mode=method, steps=steps, sampler=sampler, seed=seed, tile=tile,
                            overlap=overlap, batch_size=batch_size, text=text, guidance=guidance,
                            output_type=output_type, progress=progress, task="stain")


def translate_region(pipe, image: Any, *, mode: str, steps: int, sampler: str, seed: int | None,
                     tile: int | None, overlap: int | None, batch_size: int, text: str | None,
                     guidance, output_type: str, progress: bool, task: str, strength: float | None = None,
                     reference: bool = False):
    """The shared tiled image-to-image loop of ``stain`` and ``translate``.

    ``mode``: ``readout``/``sample`` (source latents as extra input channels) or ``sdedit``
    (unpaired: the source encoded by the target autoencoder, noised to t = ``strength`` and
    integrated back to t = 0 by the target-domain model).
    """
    require(mode in METHODS, f"mode must be one of {METHODS}, got {mode!r}")
    if mode != "readout":
        check_sampler(sampler, steps)
    seed = resolve_seed(seed)
    source = load_image(image, what="source image")
    tile = int(tile or pipe.image_size)
    overlap = int(tile // 4 if overlap is None else overlap)
    require(tile == pipe.image_size, f"tile must equal the model's image size ({pipe.image_size} px); got {tile}")
    conditions, records, _ = pipe.encode_conditions(1, text=text)
    guidance = pipe.check_guidance(guidance, conditions)
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
            from .sdedit import noise_to, sample_from

            x0 = pipe.encode_images(tiles)
            x_t = noise_to(x0, pipe.noise(tile_seeds, channels=x0.shape[1]), strength)
            latents = sample_from(pipe, x_t, strength, cond, steps=steps, sampler=sampler, guidance=guidance,
                                  generator=torch.Generator(device=pipe.device).manual_seed(seed + first))
        else:
            extra = pipe.encode_images(tiles, source=True)
            shape = (b, pipe.latent_channels, extra.shape[-2], extra.shape[-1])
            if mode == "readout":
                from ..flow import readout

                latents = readout(pipe.model, cond, extra, shape)
            else:
                from ..flow import sample

                latents = sample(pipe.model, pipe.noise(tile_seeds), cond, method=sampler, steps=steps,
                                 guidance=guidance, extra_input=extra,
                                 generator=torch.Generator(device=pipe.device).manual_seed(seed + first))
        return pipe.decode(latents)

    pixels = image_to_tensor([source])[0].to(pipe.device)
    result = tiled_apply(pixels, run_tiles, tile=tile, overlap=overlap, batch_size=batch_size, progress=progress)
    record = dict(records[0])
    record["source"] = {"source": str(image) if not hasattr(image, "size") else None, "sha256": sha256_of(source)[:16],
                        "size": list(source.size)}
    used_sampler = "readout" if mode == "readout" else sampler
    params = pipe.parameters([record], [seed], sampler=used_sampler, steps=1 if mode == "readout" else steps,
                             guidance=guidance, batch_seed=seed, task=task, tile=tile, overlap=overlap,
                             strength=strength, mode=mode)
    return pipe.package(result[None], params, output_type)


def _reference_tokens(pipe, tiles: torch.Tensor) -> dict:
    """Reference-image stream from the source tiles themselves (structure hint for 'translate')."""
    if "image" not in pipe.modalities or "image" not in pipe.encoders:
        return {}
    uint8 = ((tiles.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return {"image": pipe.encoders["image"].encode(uint8)}
