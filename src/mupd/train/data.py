"""Training data: a streamed shard source, or tensors in memory; a data order that is a pure
function of (seed, epoch).

The loop asks ``data.batches(seed=, start=, global_size=G, rank=r, world=W)`` for this rank's part
of global batch after global batch: rank ``r`` takes stream positions ``start + r, start + r + W,
...`` of every block of ``G``, so a resumed run (``start`` = images seen) reads exactly the samples
an uninterrupted run would, on any number of devices.

Sources:

- ``from_shards``: a ``mupd data encode`` shard folder, local or an fsspec URL, streamed through a
  DataLoader (``mupd.train.stream.ShardStream``): memory stays flat however large the set.
- ``from_folder``: a class-per-folder patch tree, VAE-encoded **once** into a shard cache
  (``<output>/latents/<key>`` or ``$MUPD_CACHE/latents/<key>``; all ranks of a ``torchrun`` job
  share the work, a re-run reuses it) and then streamed like shards. Only when the alignment
  encoder needs the pixels are they kept in memory (``TrainData``), as the demos also do.

``TrainData`` (in memory) orders samples by a (seed, epoch) permutation of all of them, computed
once per epoch. Items carry ``latent``, ``label``, ``caption`` and optionally ``source_latent``
(paired translation data -> extra input channels), condition tensors (e.g. ``rna``), ``pixels``
(uint8, for the alignment encoder) and alignment targets (``align_patches``/``align_cls``, kept as
float16). With ``augment`` every sample gets one dihedral element (flip / 90-degree rotation) of
(seed, position), applied alike to the latent, the paired maps and the alignment grid.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..data.shard_reader import HALF_KEYS, augment, dihedral_codes
from ..errors import MupdError


class HalfTargets(dict):
    """``TrainData.tensors``: alignment targets set into it are kept as float16 (half the memory)."""

    def __setitem__(self, key, value):
        if key in HALF_KEYS and torch.is_tensor(value) and value.is_floating_point():
            value = value.half()
        super().__setitem__(key, value)


@dataclass
class TrainData:
    latents: torch.Tensor  # (N, C, h, w) standardised VAE latents
    labels: torch.Tensor  # (N,) long, -1 = none
    captions: list[str]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # source_latent, rna, pixels ...
    ids: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    vocabulary: object = None  # the GeneVocabulary behind an "rna_values" tensor (saved with the model)
    augment: bool = False  # dihedral flips/rotations per (seed, position); off for the demos' data

    def __post_init__(self):
        tensors = HalfTargets()
        for key, value in self.tensors.items():
            tensors[key] = value
        self.tensors = tensors

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
            yield augment(batch, dihedral_codes(seed, batch["position"])) if self.augment else batch
            start += global_size

    def batch(self, indices: torch.Tensor) -> dict:
        idx = indices.tolist()
        out = {"latent": self.latents[indices], "label": self.labels[indices], "caption": [self.captions[i] for i in idx]}
        for key, value in self.tensors.items():
            out[key] = value[indices].float() if key in HALF_KEYS else value[indices]
        return out


@functools.lru_cache(maxsize=4)  # once per epoch, not once per step
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


def from_folder(cfg, vae, *, keep_pixels: bool, progress: bool = True):
    """A class-per-folder patch tree (``path/<class>/*.jpg``), class-balanced ``data.limit``:
    encoded once into a shard cache and streamed (``TrainData`` in memory when ``keep_pixels``)."""
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
    captions = captions_for(labels, cfg.data.captions)
    if not keep_pixels:  # captions come from data.captions by label when read, so editing them needs no re-encode
        from .stream import ShardStream

        cache = encode_once(cfg, vae, records, progress=progress)
        templates = {str(label): caption for label, caption in zip(labels, captions)}
        return ShardStream(cache, captions=templates, workers=cfg.data.workers, augment=cfg.data.augment, class_names=classes)
    numeric = [lab if isinstance(lab, int) else -1 for lab in labels]
    pixels = load_pixels([r.image for r in records], cfg.data.image_size)
    latents = encode_pixels(vae, pixels, progress=progress)
    return TrainData(latents, torch.tensor(numeric, dtype=torch.long), captions, {"pixels": pixels},
                     [r.id for r in records], classes, augment=cfg.data.augment)


def cache_folder(cfg, vae) -> Path:
    """Where a patch folder's latents are cached: keyed by folder, size, limit and the VAE's weights."""
    import hashlib
    import json

    weights = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()) if hasattr(vae, "state_dict") else []:
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    key = json.dumps([str(Path(cfg.data.path).resolve()), cfg.data.image_size, cfg.data.limit, weights.hexdigest()])
    base = Path(os.environ["MUPD_CACHE"]) if os.environ.get("MUPD_CACHE") else Path(cfg.output)
    return base / "latents" / hashlib.sha256(key.encode()).hexdigest()[:16]


def encode_once(cfg, vae, records, *, progress: bool = True) -> Path:
    """Encode ``records`` into shards unless a finished cache exists. Under ``torchrun`` every rank
    encodes its share of the shards and waits for the index (``mupd.data.encode``); a killed
    encode resumes from its finished shards."""
    from ..data.encode import EncodeJob, encode_dataset

    out = cache_folder(cfg, vae)
    job = EncodeJob(source=str(cfg.data.path), vae=str(cfg.vae.path or "in-memory autoencoder"), out=str(out),
                    shard_size=256, size=cfg.data.image_size, batch_size=64)
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return encode_dataset(job, records=records, vae=vae, progress=progress and (world == 1 or dist.get_rank() == 0))


# --- shard source -------------------------------------------------------------------------------
def from_shards(cfg):
    """A ``mupd data encode`` shard folder (local or fsspec URL), streamed (``ShardStream``)."""
    from .stream import ShardStream

    return ShardStream(cfg.data.path, limit=cfg.data.limit, captions=cfg.data.captions, workers=cfg.data.workers,
                       augment=cfg.data.augment)
