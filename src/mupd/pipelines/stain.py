"""Stain: a source-stained region (H&E, IHC) -> the target stain (IHC, multiplex IF channels).

The model is a fine-tune whose input holds the source image's latents as extra channels
(``extra_in_channels``; zero-initialised at the start of fine-tuning) and whose ``vae`` is the
target domain's autoencoder (3 channels for IHC, k channels for mIF). Two inference modes:

* ``"readout"``: one forward pass at t = 1 from a zero latent, ``x0 = -v(0, 1, c)`` — the
  posterior mean; deterministic and what dense targets (marker intensities) are scored with;
* ``"sample"``: integrate the flow from noise — sharper, stochastic texture.

Regions larger than the model's tile are processed as overlapping tiles blended with raised-cosine
weights (``regions.translate_region``), so a whole field comes out without seams.
"""

from __future__ import annotations

from typing import Any

from ..errors import require
from .base import PipelineBase
from .output import PipelineOutput
from .regions import translate_region

METHODS = ("readout", "sample")


def stain(pipe, image: Any, *, method: str = "readout", steps: int = 20, sampler: str = "heun",
          seed: int | None = 0, tile: int | None = None, overlap: int | None = None, batch_size: int = 16,
          text: str | None = None, guidance: float | dict | None = None, scales: dict | None = None,
          output_type: str = "pil", progress: bool = False):
    """Translate one source image (any size >= 8 px) into the model's target stain.

    ``guidance`` needs ``method="sample"`` (a read-out is one conditional pass, nothing to guide);
    ``scales`` (lambda_m) applies to both methods."""
    require(pipe.source_channels > 0,
            f"{pipe.path} is a '{pipe.task}' model without source-image input channels; 'stain' needs a "
            "fine-tune with extra_in_channels (see configs/stain-*.yaml); for an unpaired domain use 'translate'")
    require(method in METHODS, f"stain method must be 'readout' or 'sample', got {method!r}")
    return translate_region(pipe, image, mode=method, steps=steps, sampler=sampler, seed=seed, tile=tile,
                            overlap=overlap, batch_size=batch_size, text=text, guidance=guidance, scales=scales,
                            output_type=output_type, progress=progress, task="stain")


class StainPipeline(PipelineBase):
    """A source-stained region -> the target stain: ``pipe(image, method="readout")``."""

    def __call__(self, image, **kwargs) -> PipelineOutput:
        return stain(self, image, **kwargs)
