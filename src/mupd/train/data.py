"""Training data in memory as tensors, and a data order that is a pure function of (seed, epoch).

The loop asks for global batch ``k`` (``global_batch_indices``): the stream of sample indices is
epoch 0's permutation, then epoch 1's, ... each drawn from a generator seeded with (seed, epoch).
Batch ``k`` is items ``[k*G, (k+1)*G)`` of that stream, so a resumed run (images seen = k*G)
reads exactly the samples an uninterrupted run would, on any number of devices: rank r takes
its slice of every global batch.

Sources: a class-per-folder patch folder (encoded once with the VAE at start) or a shard folder
written by ``mupd data encode`` (``mupd.data.shards``). Items carry ``latent``, ``label``,
``caption`` and optionally ``source_latent`` (paired translation data -> extra input channels),
condition tensors (e.g. ``rna``) and ``pixels`` (uint8, for the alignment encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import MupdError

@dataclass
class TrainData:
    latents: torch.Tensor  # (N, C, h, w) standardised VAE latents
    labels: torch.Tensor  # (N,) long, -1 = none
    captions: list[str]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # source_latent, rna, pixels ...
    ids: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    vocabulary: object = None  # the GeneVocabulary behind an "rna_values" tensor (saved with the model)

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    @property
    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every extra tensor (``source_latent``, ``rna``, ``align_patches`` ...)."""
        return {k: tuple(v.shape[1:]) for k, v in self.tensors.items()}

    def batches(self, *, seed: int, start: int, global_size: int, rank: int = 0, world: int = 1) -> Iterator[dict]:
        """This rank's part of global batch after global batch, from ``start`` images on.

        Rank ``r`` takes global positions ``start + r, start + r + world, ...``; ``batch["position"]``
        holds them so per-sample randomness can follow the position, not the rank."""
        mine = torch.arange(rank, global_size, world)
        while True:
            batch = self.batch(global_batch_indices(seed, len(self), start, global_size)[mine])
            batch["position"] = start + mine
            yield batch
            start += global_size

    def batch(self, indices: torch.Tensor) -> dict:
        idx = indices.tolist()
        out = {"latent": self.latents[indices], "label": self.labels[indices], "caption": [self.captions[i] for i in idx]}
        for key, value in self.tensors.items():
            out[key] = value[indices]
        return out


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def global_batch_indices(seed: int, n: int, start: int, size: int) -> torch.Tensor:
    """Items ``[start, start+size)`` of the (seed, epoch)-permutation stream over ``n`` samples."""
    out = []
    pos = start
    while pos < start + size:
        epoch, offset = divmod(pos, n)
        take = min(n - offset, start + size - pos)
        out.append(epoch_permutation(seed, epoch, n)[offset:offset + take])
        pos += take
    return torch.cat(out)


def data_position(images_seen: int, n: int) -> tuple[int, int]:
    """(epoch, position in epoch) after ``images_seen`` samples."""
    return divmod(images_seen, n)


# --- folder source ------------------------------------------------------------------------------
def load_pixels(paths: list[Path], size: int) -> torch.Tensor:
    """uint8 (N, 3, size, size); a corrupt file raises MupdError naming it."""
    from ..data.images import read_image, resize_square

    arrays = [np.asarray(resize_square(read_image(p), size), dtype=np.uint8) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def encode_pixels(vae, pixels: torch.Tensor, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """uint8 pixels -> standardised latents with the VAE (posterior mean; deterministic)."""
    from tqdm.auto import tqdm

    out = []
    device = next(vae.parameters()).device if hasattr(vae, "parameters") else torch.device("cpu")
    for start in tqdm(range(0, len(pixels), batch_size), desc="encoding latents", disable=not progress, leave=False):
        x = pixels[start:start + batch_size].to(device).float() / 127.5 - 1.0
        out.append(vae.encode(x).float().cpu())
    return torch.cat(out)


def captions_for(labels: list, templates: dict) -> list[str]:
    """Caption per sample: ``templates[label]``, else "class <label>"."""
    return [str(templates.get(str(label), f"class {label}")) for label in labels]


def from_folder(cfg, vae, *, keep_pixels: bool, progress: bool = True) -> TrainData:
    """A class-per-folder patch tree (``path/<class>/*.jpg``), class-balanced ``data.limit``."""
    from ..data.folders import patch_folder

    if vae is None:
        raise MupdError("data.source=folder needs an autoencoder to encode the patches: set vae.path to a LatentAutoencoder folder")
    root = Path(cfg.data.path)
    if not cfg.data.path or not root.is_dir():
        raise MupdError(f"data.path={cfg.data.path!r} is not a folder; pass a folder with one sub-folder of image patches per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = None if cfg.data.limit is None else max(1, cfg.data.limit // max(len(classes), 1))
    records = patch_folder(root, limit_per_class=per_class)
    labels = [r.label if r.label is not None else -1 for r in records]
    numeric = [lab if isinstance(lab, int) else -1 for lab in labels]
    pixels = load_pixels([r.image for r in records], cfg.data.image_size)
    latents = encode_pixels(vae, pixels, progress=progress)
    tensors = {"pixels": pixels} if keep_pixels else {}
    return TrainData(latents, torch.tensor(numeric, dtype=torch.long), captions_for(labels, cfg.data.captions),
                     tensors, [r.id for r in records], classes)


# --- shard source -------------------------------------------------------------------------------
def from_shards(cfg) -> TrainData:
    """Read a ``mupd data encode`` shard folder into memory (shard order, no augmentation).

    Every rank reads all of it; the (seed, epoch) order above splits the work."""
    from ..data.shards import read_all

    items = read_all(cfg.data.path)
    labels = items.pop("labels").long()
    captions = [str(c or "") for c in items.pop("captions")]
    ids = items.pop("ids")
    if not any(captions) and cfg.data.captions:
        captions = [str(cfg.data.captions.get(str(int(lab)), "")) for lab in labels]
    latents = items.pop("latent").float()
    if cfg.data.limit is not None:
        keep = slice(0, cfg.data.limit)
        latents, labels, captions, ids = latents[keep], labels[keep], captions[keep], ids[keep]
        items = {k: v[keep] for k, v in items.items()}
    vocabulary = None
    if (Path(cfg.data.path) / "gene_vocabulary.json").exists():  # written by 'mupd data encode --vocabulary'
        from ..data.expression import GeneVocabulary

        vocabulary = GeneVocabulary.load(Path(cfg.data.path) / "gene_vocabulary.json")
    return TrainData(latents, labels, captions, items, list(ids), vocabulary=vocabulary)
