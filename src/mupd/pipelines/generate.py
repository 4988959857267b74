"""Generate: any subset of {text, RNA, reference image} (or a class label) -> H&E tiles.

Image i of a call with ``seed=s`` starts from the noise of seed ``s + i`` (drawn on the CPU), so
``pipe(..., n=1, seed=s + i)`` repeats image i on its own with an ODE sampler. SDE sampling
(``euler_maruyama``) also draws noise along the way from a generator seeded with ``s``, so it
repeats for the same call (same n and batch size) only.

    from mupd.pipelines import GeneratePipeline
    pipe = GeneratePipeline.from_pretrained("runs/her2st/checkpoint")
    out = pipe(rna="spots.h5ad:C5_10x12", text="invasive carcinoma", guidance={"rna": 2, "text": 3},
               scales={"rna": 1.5}, n=4, seed=0)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import require
from .base import PipelineBase
from .options import check_sampler, resolve_seed
from .output import PipelineOutput


@torch.no_grad()
def generate(
    pipe,
    text: str | Sequence[str] | None = None,
    rna: Any = None,
    image: Any = None,
    *,
    label: Any = None,
    n: int = 1,
    steps: int = 50,
    sampler: str = "heun",
    guidance: float | dict | None = None,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    scales: dict | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    output_type: str = "pil",
    progress: bool = False,
) -> PipelineOutput:
    """Sample ``n`` images; conditions may each be one value or a list of ``n`` values.

    ``guidance``: classifier-free guidance, a joint scale or ``{modality: scale}``; ``scales``: the
    per-modality inference scale lambda_m of the decoupled cross-attention (``{modality: scale}``,
    1 = as trained). Both are recorded in every image's metadata."""
    from ..flow import sample

    require(isinstance(n, int) and n >= 1, f"n must be a positive integer, got {n!r}")
    require(isinstance(batch_size, int) and batch_size >= 1, f"batch_size must be a positive integer, got {batch_size!r}")
    require(pipe.source_channels == 0 or pipe.task == "generate",
            f"{pipe.path} is a '{pipe.task}' model that needs a source image; use pipe.stain/translate "
            f"(or 'mupd {pipe.task}')")
    check_sampler(sampler, steps)
    seed = resolve_seed(seed)
    conditions, records, notes = pipe.encode_conditions(n, text=text, rna=rna, image=image, label=label)
    guidance = pipe.check_guidance(guidance, conditions)
    scales = pipe.check_scales(scales, conditions)
    seeds = [seed + i for i in range(n)]
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    pixels = []
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        noise = pipe.noise(seeds[rows])
        chunk = {m: _rows(c, rows) for m, c in conditions.items()}
        latents = sample(pipe.model, noise, chunk, method=sampler, steps=steps, guidance=guidance,
                         guidance_interval=tuple(guidance_interval), scales=scales, generator=generator,
                         progress=progress)
        pixels.append(pipe.decode(latents))
    params = pipe.parameters(records, seeds, sampler=sampler, steps=steps, guidance=guidance, batch_seed=seed,
                             task="generate", guidance_interval=list(guidance_interval), scales=scales)
    out = pipe.package(torch.cat(pixels), params, output_type)
    out.notes = notes
    return out


def _rows(condition, rows: slice):
    if isinstance(condition, tuple):
        return tuple(c[rows] for c in condition)
    return condition[rows]


class GeneratePipeline(PipelineBase):
    """Text / RNA / reference image (any subset) or a class label -> H&E tiles: ``pipe(label="1", n=4)``."""

    def __call__(self, *args, **kwargs) -> PipelineOutput:
        return generate(self, *args, **kwargs)
