"""The tasks users came for: generate, vary, stain, translate, augment.

    from mupd.pipelines import Pipeline
    pipe = Pipeline.from_pretrained("mupd-demo/checkpoint")
    images = pipe(text="lymph node, metastatic tumour", n=4, steps=20, seed=0)

Loaded lazily, so ``mupd --help`` does not import the pipeline machinery.
"""

from __future__ import annotations

__all__ = ["Pipeline", "PipelineOutput", "read_params", "save_png"]


def __getattr__(name):
    if name == "Pipeline":
        from .base import Pipeline

        return Pipeline
    if name == "PipelineOutput":
        from .output import PipelineOutput

        return PipelineOutput
    if name in ("read_params", "save_png"):
        from . import pngmeta

        return getattr(pngmeta, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
