"""The tasks users came for: generate, vary, stain, translate, augment.

    from mupd.pipelines import Pipeline
    pipe = Pipeline.from_pretrained("mupd-demo/checkpoint")
    images = pipe(label="1", n=4, steps=30, guidance=2.0, seed=0)
    images.save("out/")

One pipeline per task as in diffusers (``GeneratePipeline``, ``VaryPipeline``, ``StainPipeline``,
``TranslatePipeline``), all on ``base.PipelineBase``; ``Pipeline`` offers every task on one object.
Loaded lazily, so ``mupd --help`` does not import the pipeline machinery.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Pipeline": "pipeline",
    "PipelineBase": "base",
    "GeneratePipeline": "generate",
    "VaryPipeline": "vary",
    "StainPipeline": "stain",
    "TranslatePipeline": "translate",
    "PipelineOutput": "output",
    "read_params": "pngmeta",
    "save_png": "pngmeta",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
