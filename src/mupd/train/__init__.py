"""Training: config (``TrainConfig``), the loop (``Trainer``, ``train``), distributed helpers,
resumable checkpoints, fine-tuning and the ``mupd demo`` job. Heavy imports are deferred."""

from __future__ import annotations

from .config import TrainConfig

__all__ = ["TrainConfig", "Trainer", "train", "run_demo"]


def __getattr__(name):
    if name in ("Trainer", "train"):
        from . import loop

        return getattr(loop, name)
    if name == "run_demo":
        from .demo import run_demo

        return run_demo
    raise AttributeError(f"module 'mupd.train' has no attribute {name!r}")
