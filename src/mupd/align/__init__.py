"""Tri-modal contrastive alignment (image / text / RNA): losses, MIL aggregators, offline towers,
the ``mupd align`` trainer, stage-2 self-taught distillation, and evaluation of the space."""

from .losses import LogitScale, info_nce, multi_pair_loss  # noqa: F401
