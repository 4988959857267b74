"""The data layer: every source returns ``list[Record]``; shards cache latents for training.

Sources: ``patch_folder`` (class-per-folder), ``read_manifest`` (CSV/Parquet), ``mupd.data.wsi``
(OpenSlide tiling, TRIDENT/CLAM coordinates), ``mupd.data.spatial`` (her2st, Visium/AnnData),
``mupd.data.tables`` (TCGA-style bulk tables), ``mupd.data.captions``, ``mupd.data.stains``
(registered stain panels). Expression: ``mupd.data.expression.GeneVocabulary``,
``mupd.data.pathways.PathwayScorer``. Caches: ``mupd.data.shards`` (``write_shards``,
``ShardDataset``) and ``mupd.data.encode`` (the ``mupd data encode`` job).
"""

from __future__ import annotations

from .captions import apply_template, join_captions, read_captions
from .folders import patch_folder
from .records import Record, check_unique_ids, read_manifest, write_manifest

__all__ = ["Record", "patch_folder", "read_manifest", "write_manifest", "check_unique_ids",
           "join_captions", "read_captions", "apply_template", "GeneVocabulary", "write_shards", "ShardDataset"]


def __getattr__(name):
    if name == "GeneVocabulary":
        from .expression import GeneVocabulary

        return GeneVocabulary
    if name in ("write_shards", "ShardDataset"):
        from . import shards

        return getattr(shards, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
