"""Translate: a source-domain region -> the target domain, keeping the source's structure.

Two recipes, chosen by the model folder:

* **paired** (a fine-tune with the source latents as extra input channels, like ``stain``; e.g.
  fresh-frozen -> FFPE from registered pairs): integrate the target-domain flow from noise given
  the source (``method="sample"``), or read the posterior mean out in one pass (``"readout"``);
* **unpaired** (any target-domain generator, no pairs needed; e.g. FF -> FFPE with an FFPE-only
  model): SDEdit — encode the source with the target autoencoder, noise it to t = ``strength`` and
  integrate back with the target model; where the model has a reference-image stream the source
  tile also conditions it. Lower strength keeps more structure, higher strength more target style.

Both run over overlapping, blended tiles, so regions of any size work.
"""

from __future__ import annotations

from typing import Any

from ..errors import require
from .base import PipelineBase
from .output import PipelineOutput
from .regions import translate_region


def translate(pipe, image: Any, *, method: str | None = None, strength: float = 0.5, steps: int = 20,
              sampler: str = "heun", seed: int | None = 0, tile: int | None = None, overlap: int | None = None,
              batch_size: int = 16, text: str | None = None, guidance: float | dict | None = None,
              scales: dict | None = None, reference: bool = True, output_type: str = "pil", progress: bool = False):
    """Translate ``image``; ``method`` defaults to ``"sample"`` for paired fine-tunes, ``"sdedit"`` otherwise."""
    paired = pipe.source_channels > 0
    method = method or ("sample" if paired else "sdedit")
    if paired:
        require(method in ("sample", "readout"),
                f"{pipe.path} is a paired translation fine-tune; method must be 'sample' or 'readout', not {method!r}")
    else:
        require(method == "sdedit",
                f"{pipe.path} has no source-image input channels, so only the unpaired recipe (method='sdedit') "
                "applies; train a paired fine-tune (configs/translate-*.yaml) for 'sample'/'readout'")
    return translate_region(pipe, image, mode=method, steps=steps, sampler=sampler, seed=seed, tile=tile,
                            overlap=overlap, batch_size=batch_size, text=text, guidance=guidance, scales=scales,
                            output_type=output_type, progress=progress, task="translate",
                            strength=strength if method == "sdedit" else None,
                            reference=bool(reference and not paired))


class TranslatePipeline(PipelineBase):
    """A source-domain region -> the target domain (paired fine-tune or unpaired SDEdit): ``pipe(image)``."""

    def __call__(self, image, **kwargs) -> PipelineOutput:
        return translate(self, image, **kwargs)
