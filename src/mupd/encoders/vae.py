"""The latent autoencoder: ``diffusers.AutoencoderKL``, or a TAESD-family tiny autoencoder
(``mupd.encoders.taesd``: diffusers' ``AutoencoderTiny``, or the 32-channel TAEF2), plus
per-channel latent statistics. ``kind`` says which: "kl", "taesd" or "taef2".

``encode`` returns *standardised* latents ``(z - mean) / std`` (per channel, statistics computed
on data with ``fit_latent_stats`` and stored in ``latent_stats.json``); ``decode`` inverts it and
returns images in [-1, 1]. Before stats are fitted, mean = 0 and std = 1 / scaling_factor (the
Stable Diffusion convention), so a pretrained SD-VAE works out of the box.

Folder layout (``save_pretrained`` / ``from_pretrained``)::

    DIR/config.json                              diffusers' config (_class_name AutoencoderKL / AutoencoderTiny),
                                                 or {"_class_name": "TAEF2", ...}
    DIR/diffusion_pytorch_model.safetensors      diffusers' weights (TAEF2: taef2_encoder/decoder.safetensors)
    DIR/latent_stats.json                        {"format": "mupd-latent-stats", "kind": ..., "mean": [...], "std": [...]}

``from_pretrained`` is offline by construction: it takes such a folder, a Stable Diffusion pipeline
folder (uses its ``vae/``), the TAEF2 folder as shipped (two safetensors files, no config), or the
name ``taef2`` (found by ``mupd.encoders.taesd.find_taef2``). A path that does not exist is an
error naming it. The Hugging Face hub is used only when the user writes ``hub:ORG/NAME``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..errors import MupdError, require

log = logging.getLogger("mupd.encoders")

STATS_FILE = "latent_stats.json"
STATS_FORMAT = "mupd-latent-stats"


class LatentAutoencoder(nn.Module):
    def __init__(self, vae, mean: torch.Tensor | None = None, std: torch.Tensor | None = None, meta: dict | None = None):
        super().__init__()
        self.vae = vae
        c = vae.config.latent_channels
        mean = torch.zeros(c) if mean is None else torch.as_tensor(mean, dtype=torch.float32).reshape(c)
        std = torch.full((c,), 1.0 / vae.config.scaling_factor) if std is None else torch.as_tensor(std, dtype=torch.float32).reshape(c)
        require(bool((std > 0).all()), "latent std must be positive in every channel")
        self.register_buffer("latent_mean", mean.float(), persistent=False)
        self.register_buffer("latent_std", std.float(), persistent=False)
        self.meta = {k: v for k, v in (meta or {}).items() if k != "kind"}
        self.requires_grad_(False)
        self.eval()

    # ---- shape facts ---------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """"kl" (diffusers AutoencoderKL), "taesd" (diffusers AutoencoderTiny) or "taef2"."""
        return getattr(self.vae, "kind", "kl")

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels)

    @property
    def downsample(self) -> int:
        if self.kind != "kl":
            return int(self.vae.downsample)
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        require(image_size % self.downsample == 0, f"image size {image_size} is not a multiple of the VAE's "
                f"downsampling factor {self.downsample}")
        return (self.latent_channels, image_size // self.downsample, image_size // self.downsample)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    # ---- constructors ----------------------------------------------------------------------
    @classmethod
    def tiny(cls, *, latent_channels: int = 4, block_out_channels: tuple[int, ...] = (32, 64), in_channels: int = 3,
             out_channels: int | None = None, sample_size: int = 64, norm_num_groups: int = 8, seed: int | None = 0,
             ) -> "LatentAutoencoder":
        """A small randomly initialised AutoencoderKL (2 blocks -> 2x down, 3 blocks -> 4x, 4 -> 8x).
        Latent stats start at mean 0, std 1 (no SD scaling factor); fit them with ``fit_latent_stats``."""
        from diffusers import AutoencoderKL

        n = len(block_out_channels)
        gen_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        try:
            vae = AutoencoderKL(in_channels=in_channels, out_channels=out_channels or in_channels,
                                down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                                block_out_channels=tuple(block_out_channels), layers_per_block=1,
                                latent_channels=latent_channels, norm_num_groups=norm_num_groups,
                                sample_size=sample_size)
        finally:
            if seed is not None:
                torch.random.set_rng_state(gen_state)
        return cls(vae, std=torch.ones(latent_channels))

    @classmethod
    def taef2(cls, folder: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> "LatentAutoencoder":
        """The pretrained TAEF2 (32 latent channels, 8x down, MIT) from ``folder`` or the offline models folder."""
        from .taesd import find_taef2

        return cls.from_pretrained(folder or find_taef2(), device=device)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, device: str | torch.device = "cpu",
                        allow_download: bool = True) -> "LatentAutoencoder":
        """A local autoencoder folder (any kind), the name ``taef2``, or ``hub:ORG/NAME`` (network)."""
        text = str(path_or_id)
        if text.startswith("hub:"):
            return cls._from_hub(text[4:], allow_download).to(device)
        path = Path(path_or_id)
        if text == "taef2" and not path.exists():
            from .taesd import find_taef2

            path = find_taef2()
        if not path.exists():
            raise MupdError(f"autoencoder folder {path} does not exist; pass a folder written by `mupd vae train` or "
                            "LatentAutoencoder.save_pretrained, 'taef2' for the offline pretrained one, or hub:ORG/NAME "
                            "to download from the Hugging Face hub")
        require(path.is_dir(), f"autoencoder {path} is a file; pass the folder that holds config.json")
        folder = path
        if not (path / "config.json").exists() and (path / "vae" / "config.json").exists():
            folder = path / "vae"  # a Stable Diffusion pipeline folder
        vae = _load_backend(folder)
        mean, std, meta = _read_stats(folder / STATS_FILE, vae.config.latent_channels)
        return cls(vae, mean, std, meta).to(device)

    @classmethod
    def _from_hub(cls, repo: str, allow_download: bool) -> "LatentAutoencoder":
        require(repo.count("/") == 1 and all(repo.split("/")), f"hub:{repo} is not a hub id like hub:stabilityai/sd-vae-ft-ema")
        if not allow_download:
            raise MupdError(f"hub:{repo} needs the network and downloads are disabled")
        log.warning("loading autoencoder %s from the Hugging Face hub (network)", repo)
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(repo, allow_patterns=["config.json", "*.safetensors", "vae/*"]))
        except Exception as exc:
            raise MupdError(f"hub autoencoder {repo} could not be downloaded ({type(exc).__name__}: {exc})") from None
        if not (folder / "config.json").exists() and (folder / "vae" / "config.json").exists():
            folder = folder / "vae"
        return cls(_load_backend(folder), meta={"source": f"hub:{repo}"})

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        from ..checkpoint import atomic_folder, write_json

        with atomic_folder(path) as tmp:
            if self.kind == "kl":
                self.vae.save_pretrained(str(tmp), safe_serialization=True)
            else:
                self.vae.save_pretrained(Path(tmp))
            write_json(tmp / STATS_FILE, self.stats_dict())
        return Path(path)

    def stats_dict(self) -> dict:
        return {"format": STATS_FORMAT, "kind": self.kind, "mean": self.latent_mean.tolist(), "std": self.latent_std.tolist(),
                "latent_channels": self.latent_channels, "downsample": self.downsample, **self.meta}

    # ---- encode / decode ---------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        require(images.ndim == 4 and images.shape[1] == self.image_channels,
                f"VAE input must be (B, {self.image_channels}, H, W), got {tuple(images.shape)}")
        require(images.shape[-1] % self.downsample == 0 and images.shape[-2] % self.downsample == 0,
                f"image size {tuple(images.shape[-2:])} is not a multiple of {self.downsample}")
        require(bool(torch.isfinite(images).all()), "VAE input contains NaN/inf")

    def _set_tiling(self, tile: int | None) -> None:
        if self.kind != "kl":  # tiling only saves memory; the tiny autoencoders run whole patches
            return
        if tile is None:
            self.vae.disable_tiling()
            return
        require(tile % self.downsample == 0, f"tile {tile} must be a multiple of {self.downsample}")
        self.vae.enable_tiling()
        self.vae.tile_sample_min_size = tile
        self.vae.tile_latent_min_size = tile // self.downsample

    @torch.no_grad()
    def encode_raw(self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None,
                   batch_size: int | None = None, tile: int | None = None) -> torch.Tensor:
        """Unstandardised latents (posterior mean, or a sample with ``sample=True``)."""
        self._check_images(images)
        self._set_tiling(tile)
        out = []
        step = batch_size or images.shape[0]
        for chunk in images.split(step):
            if self.kind != "kl":
                out.append(self.vae.encode_raw(chunk.to(self.device)).float())
                continue
            dist = self.vae.encode(chunk.to(self.device, dtype=self.vae.dtype)).latent_dist
            out.append((dist.sample(generator) if sample else dist.mean).float())
        return torch.cat(out)

    def encode(self, images: torch.Tensor, **kw) -> torch.Tensor:
        """Images in [-1, 1], (B, C, H, W) -> standardised latents (B, c, H/f, W/f)."""
        z = self.encode_raw(images, **kw)
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, batch_size: int | None = None, tile: int | None = None) -> torch.Tensor:
        """Standardised latents -> images in [-1, 1]."""
        require(latents.ndim == 4 and latents.shape[1] == self.latent_channels,
                f"latents must be (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        self._set_tiling(None if tile is None else tile)
        z = latents.to(self.device).float() * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)
        if self.kind != "kl":
            out = [self.vae.decode_raw(chunk).float() for chunk in z.split(batch_size or z.shape[0])]
        else:
            out = [self.vae.decode(chunk.to(self.vae.dtype)).sample.float() for chunk in z.split(batch_size or z.shape[0])]
        return torch.cat(out).clamp(-1, 1)

    @torch.no_grad()
    def fit_latent_stats(self, batches: Iterable[torch.Tensor], **encode_kw) -> dict:
        """Per-channel mean/std of raw latents over ``batches`` of images in [-1, 1] (streaming)."""
        n, s1, s2 = 0, None, None
        for images in batches:
            z = self.encode_raw(images, **encode_kw).double()
            z = z.transpose(0, 1).reshape(self.latent_channels, -1)
            s1 = z.sum(1) if s1 is None else s1 + z.sum(1)
            s2 = (z * z).sum(1) if s2 is None else s2 + (z * z).sum(1)
            n += z.shape[1]
        require(n > 1, "fit_latent_stats got no images")
        mean = s1 / n
        std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
        self.latent_mean.copy_(mean.float())
        self.latent_std.copy_(std.float().clamp_min(1e-6))
        self.meta["stats_n_values"] = int(n)
        return self.stats_dict()


def _load_backend(folder: Path):
    """The network in an autoencoder folder, by kind (config.json's class, or TAEF2's file names)."""
    from .taesd import DiffusersTiny, Taef2, folder_kind

    kind = folder_kind(folder)
    if kind == "taef2":
        return Taef2.from_folder(folder)
    if kind == "taesd":
        return DiffusersTiny.from_folder(folder)
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises OSError/EnvironmentError/ValueError/SafetensorError
        raise MupdError(f"VAE folder {folder} could not be loaded ({type(exc).__name__}: {exc}); the "
                        "weights are missing, truncated or do not match config.json") from None


def _read_stats(path: Path, channels: int):
    if not path.exists():
        return None, None, {}
    from ..checkpoint import read_json

    data = read_json(path)
    require(data.get("format") == STATS_FORMAT and "mean" in data and "std" in data,
            f"{path} is not a mupd latent statistics file (needs format, mean, std)")
    require(len(data["mean"]) == channels and len(data["std"]) == channels,
            f"{path} has {len(data['mean'])} channels but the VAE has {channels}; the stats belong to another VAE")
    meta = {k: v for k, v in data.items() if k not in ("format", "kind", "mean", "std", "latent_channels", "downsample")}
    return torch.tensor(data["mean"]), torch.tensor(data["std"]), meta
