"""``Pipeline``: every task on one object (what ``mupd generate|vary|stain|translate`` load).

    pipe = Pipeline.from_pretrained("mupd-demo/checkpoint")
    images = pipe(label="1", n=4, steps=30, guidance=2.0, seed=0)    # generate
    images.save("out/")                                               # PNGs carry their parameters
    pipe.vary("patch.png", strength=0.6, n=4)
    pipe.stain("he.png", method="readout")                            # stain fine-tunes
    pipe.translate("ff.png", strength=0.5)

The top of the package: it imports the task modules, none of which imports it. For one task,
``GeneratePipeline`` / ``VaryPipeline`` / ``StainPipeline`` / ``TranslatePipeline`` load the same
folder and are called directly.
"""

from __future__ import annotations

from .base import PipelineBase
from .generate import generate
from .output import PipelineOutput
from .stain import stain
from .translate import translate
from .vary import vary


class Pipeline(PipelineBase):
    """All tasks of a pipeline folder; calling it generates."""

    def __call__(self, *args, **kwargs) -> PipelineOutput:
        return generate(self, *args, **kwargs)

    def generate(self, *args, **kwargs) -> PipelineOutput:
        return generate(self, *args, **kwargs)

    def vary(self, image, **kwargs) -> PipelineOutput:
        return vary(self, image, **kwargs)

    def stain(self, image, **kwargs) -> PipelineOutput:
        return stain(self, image, **kwargs)

    def translate(self, image, **kwargs) -> PipelineOutput:
        return translate(self, image, **kwargs)
