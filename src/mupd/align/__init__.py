"""Tri-modal contrastive alignment (image / text / RNA): losses (``align.losses``), MIL aggregators
(``align.mil``), offline towers, the ``mupd align`` trainer (``align.train``), stage-2 self-taught
distillation (``align.slide``), and evaluation of the space (``align.evaluate``).

Submodules are imported where used, so ``mupd --help`` does not load torch."""
