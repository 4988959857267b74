"""The tasks users came for: generate, vary, stain, translate, augment.

    from mupd.pipelines import Pipeline
    pipe = Pipeline.from_pretrained("runs/demo/pipeline")
    images = pipe(text="lymph node with metastatic tumour", n=4, steps=20, seed=0)
"""

from __future__ import annotations

from .base import Pipeline
from .output import PipelineOutput
from .pngmeta import read_params, save_png

__all__ = ["Pipeline", "PipelineOutput", "read_params", "save_png"]
