"""Vary: new tissue like a reference image.

Two knobs, usable together:

* the reference-image stream (models with an ``image`` stream and encoder): the reference is
  encoded by the model's image encoder and conditions every sample — new tissue with the
  reference's morphology, any layout;
* ``strength`` < 1 (SDEdit): the reference is encoded by the autoencoder, noised to t = strength
  and integrated back — the same layout, redrawn detail. An image of another size is centre-cropped
  to a square and resized to the model's tile, with a one-line notice (``resized_from`` is recorded).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import require
from .base import PipelineBase
from .options import check_sampler, resolve_seed
from .inputs import fit_to_tile, image_to_tensor, load_image
from .output import PipelineOutput
from .pngmeta import sha256_of
from .sdedit import check_strength, noise_to, partial_steps, sample_from


@torch.no_grad()
def vary(pipe, image: Any, *, strength: float = 1.0, n: int = 1, use_reference: bool = True,
         text: str | None = None, rna: Any = None, steps: int = 50, sampler: str = "heun",
         guidance: float | dict | None = None, guidance_interval=(0.0, 1.0), scales: dict | None = None,
         seed: int | None = None, batch_size: int = 16, output_type: str = "pil", progress: bool = False):
    """``n`` variations of ``image`` (path, PIL or uint8 array).

    With ``strength`` < 1 an image of another size is centre-cropped to a square and resized to the
    model's tile (a notice in ``out.notes``; ``resized_from`` in the image record)."""
    from ..flow import sample

    require(isinstance(n, int) and n >= 1, f"n must be a positive integer, got {n!r}")
    check_sampler(sampler, steps)
    strength = check_strength(strength, sampler, steps)
    seed = resolve_seed(seed)
    reference = load_image(image, what="reference image")  # the file first: a missing file is the real problem
    has_stream = "image" in pipe.modalities and "image" in pipe.encoders
    use_reference = bool(use_reference and has_stream)
    require(use_reference or strength < 1.0,
            f"this model has no reference-image stream (streams: {list(pipe.modalities)}), so strength=1 would "
            "ignore the image; use strength < 1 (e.g. 0.6) to keep its layout")
    notes, resized_from = [], None
    if strength < 1.0:  # SDEdit encodes the image as one tile of the model
        reference, note, resized_from = fit_to_tile(reference, pipe.image_size, what=f"reference image {_name(image)}")
        notes += [note] if note else []
    conditions, records, cond_notes = pipe.encode_conditions(n, text=text, rna=rna,
                                                             image=reference if use_reference else None)
    guidance = pipe.check_guidance(guidance, conditions)
    scales = pipe.check_scales(scales, conditions)
    seeds = [seed + i for i in range(n)]
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    x0 = pipe.encode_images(image_to_tensor([reference])) if strength < 1.0 else None
    pixels = []
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        noise = pipe.noise(seeds[rows])
        chunk = {m: tuple(x[rows] for x in c) if isinstance(c, tuple) else c[rows] for m, c in conditions.items()}
        if strength < 1.0:
            latents = sample_from(pipe, noise_to(x0.expand_as(noise), noise, strength), strength, chunk, steps=steps,
                                  sampler=sampler, guidance=guidance, guidance_interval=guidance_interval,
                                  scales=scales, generator=generator, progress=progress)
        else:
            latents = sample(pipe.model, noise, chunk, method=sampler, steps=steps, guidance=guidance,
                             guidance_interval=tuple(guidance_interval), scales=scales, generator=generator,
                             progress=progress)
        pixels.append(pipe.decode(latents))
    for rec in records:  # the image shaped every output (stream and/or SDEdit start): record it
        rec["image"] = {"source": _source(image), "sha256": sha256_of(reference)[:16],
                        **({"resized_from": resized_from} if resized_from else {})}
    params = pipe.parameters(records, seeds, sampler=sampler, steps=steps, guidance=guidance, batch_seed=seed,
                             task="vary", strength=strength, reference_stream=use_reference, scales=scales,
                             guidance_interval=list(guidance_interval),
                             steps_run=partial_steps(strength, steps, sampler) if strength < 1.0 else None)
    out = pipe.package(torch.cat(pixels), params, output_type)
    out.notes = notes + cond_notes
    return out


def _source(image) -> str | None:
    return str(image) if isinstance(image, (str, os.PathLike)) else None


def _name(image) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else "(in memory)"


class VaryPipeline(PipelineBase):
    """New tissue like a reference image: ``pipe(image, strength=0.6, n=4)``."""

    def __call__(self, image, **kwargs) -> PipelineOutput:
        return vary(self, image, **kwargs)
