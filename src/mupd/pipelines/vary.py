"""Vary: new tissue like a reference image.

Two knobs, usable together:

* the reference-image stream (models with an ``image`` stream and encoder): the reference is
  encoded by the model's image encoder and conditions every sample — new tissue with the
  reference's morphology, any layout;
* ``strength`` < 1 (SDEdit): the reference is encoded by the autoencoder, noised to t = strength
  and integrated back — the same layout, redrawn detail. Needs the model's tile size.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import require
from .base import check_sampler, resolve_seed
from .inputs import image_to_tensor, load_image
from .sdedit import check_strength, noise_to, sample_from


@torch.no_grad()
def vary(pipe, image: Any, *, strength: float = 1.0, n: int = 1, use_reference: bool = True,
         text: str | None = None, rna: Any = None, steps: int = 50, sampler: str = "heun",
         guidance: float | dict | None = None, guidance_interval=(0.0, 1.0), seed: int | None = None,
         batch_size: int = 16, output_type: str = "pil", progress: bool = False):
    """``n`` variations of ``image`` (path, PIL or uint8 array)."""
    from ..flow import sample

    require(isinstance(n, int) and n >= 1, f"n must be a positive integer, got {n!r}")
    check_sampler(sampler, steps)
    strength = check_strength(strength)
    seed = resolve_seed(seed)
    has_stream = "image" in pipe.modalities and "image" in pipe.encoders
    use_reference = bool(use_reference and has_stream)
    require(use_reference or strength < 1.0,
            f"this model has no reference-image stream (streams: {list(pipe.modalities)}), so strength=1 would "
            "ignore the image; use strength < 1 (e.g. 0.6) to keep its layout")
    reference = load_image(image, what="reference image", size=pipe.image_size if strength < 1.0 else None)
    conditions, records, notes = pipe.encode_conditions(n, text=text, rna=rna,
                                                        image=reference if use_reference else None)
    guidance = pipe.check_guidance(guidance, conditions)
    seeds = [seed + i for i in range(n)]
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    x0 = pipe.encode_images(image_to_tensor([reference])) if strength < 1.0 else None
    pixels = []
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        noise = pipe.noise(seeds[rows])
        chunk = {m: tuple(x[rows] for x in c) if isinstance(c, tuple) else c[rows] for m, c in conditions.items()}
        if strength < 1.0:
            x_t = noise_to(x0.expand_as(noise), noise, strength)
            latents = sample_from(pipe, x_t, strength, chunk, steps=steps, sampler=sampler, guidance=guidance,
                                  guidance_interval=guidance_interval, generator=generator)
        else:
            latents = sample(pipe.model, noise, chunk, method=sampler, steps=steps, guidance=guidance,
                             guidance_interval=tuple(guidance_interval), generator=generator, progress=progress)
        pixels.append(pipe.decode(latents))
    if not use_reference:  # the image still shaped the output: record it
        from .pngmeta import sha256_of

        for rec in records:
            rec["image"] = {"source": str(image) if not hasattr(image, "size") else None, "sha256": sha256_of(reference)[:16]}
    params = pipe.parameters(records, seeds, sampler=sampler, steps=steps, guidance=guidance, batch_seed=seed,
                             task="vary", strength=strength, reference_stream=use_reference)
    out = pipe.package(torch.cat(pixels), params, output_type)
    out.notes = notes
    return out
