"""``AlignModel``: the towers of a shared embedding space, their temperature, and their folder format.

Folder: ``config.json`` (format, tower configs, the AlignConfig used), ``model.safetensors``
(keys ``towers.<modality>.*`` and ``logit_scale.*``), ``gene_vocabulary.json`` when an RNA tower is
present. Written atomically; ``from_pretrained`` never unpickles.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import atomic_folder, load_into, read_json, save_tensors, write_json
from ..errors import MupdError, require
from .losses import LogitScale
from .towers import build_tower

FORMAT = "mupd-align"
CREATE_HINT = "create one with: mupd align train pcam-image-text --out DIR (image+text) or her2st-image-rna (image+rna)"


class AlignModel(nn.Module):
    def __init__(self, towers: dict[str, nn.Module]):
        super().__init__()
        require(len(towers) >= 2, "an alignment model needs at least two modality towers")
        self.towers = nn.ModuleDict(towers)
        self.logit_scale = LogitScale()

    @property
    def modalities(self) -> list[str]:
        return list(self.towers)

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        """{modality: batch} -> {modality: (B, embed_dim) L2-normalised}."""
        return {m: self.towers[m].embed(v) for m, v in batch.items() if m in self.towers}

    def config(self) -> dict:
        return {"format": FORMAT, "towers": {m: t.config() for m, t in self.towers.items()}}

    def save_pretrained(self, path: str | os.PathLike, *, align_config: dict | None = None, vocabulary=None,
                        extra_files: dict | None = None) -> Path:
        """Write the folder atomically; ``extra_files`` maps file name -> callable(path) writing it."""
        with atomic_folder(path) as tmp:
            write_json(tmp / "config.json", {**self.config(), "align_config": align_config or {}})
            save_tensors(tmp / "model.safetensors", self.state_dict())
            if vocabulary is not None:
                vocabulary.save(tmp / "gene_vocabulary.json")
            for name, writer in (extra_files or {}).items():
                writer(tmp / name)
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, modalities=None, device="cpu") -> "AlignModel":
        path = Path(path)
        if not path.is_dir():
            raise MupdError(f"alignment model folder {path} does not exist; {CREATE_HINT}")
        config = read_json(path / "config.json")
        require(config.get("format") == FORMAT, f"{path / 'config.json'} is not a mupd alignment model (format != {FORMAT!r})")
        model = cls({m: build_tower(m, c) for m, c in config["towers"].items()})
        load_into(model, path / "model.safetensors")
        return model.to(device)


def load_vocabulary(path: str | os.PathLike):
    file = Path(path) / "gene_vocabulary.json"
    if not file.exists():
        return None
    from ..data.expression import GeneVocabulary

    return GeneVocabulary.load(file)
