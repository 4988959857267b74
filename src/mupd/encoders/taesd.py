"""The TAESD family of tiny autoencoders as latent spaces for ``LatentAutoencoder``.

Two kinds, both with images in [-1, 1] in and out of ``encode_raw`` / ``decode_raw``:

* ``taesd``: the 4/16-channel variants through diffusers' ``AutoencoderTiny`` (its folder holds
  diffusers' ``config.json`` with ``_class_name: AutoencoderTiny`` and its safetensors weights).
* ``taef2``: the 32-channel TAEF2 (MIT, madebyollin/taesd; a distilled FLUX.2 autoencoder). Its
  blocks carry an extra GroupNorm "pool" branch that ``AutoencoderTiny`` lacks, so it is a small
  module of ours whose state-dict keys equal the shipped ``taef2_encoder.safetensors`` /
  ``taef2_decoder.safetensors`` (``nn.Sequential`` indices), loaded with ``strict=True``. The net
  itself takes RGB in [0, 1] and its decoder returns ≈ [0, 1]; the [-1, 1] mapping is done here.

``find_taef2()`` locates the offline weights: ``$MUPD_MODELS/taef2``, else ``shared/models/taef2``
beside the checkout or the current folder (where the sample data's ``shared/data`` lives).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ..errors import MupdError

TAEF2_FILES = ("taef2_encoder.safetensors", "taef2_decoder.safetensors")
TAEF2_LICENSE = "MIT (madebyollin/taesd; distilled from the FLUX.2 autoencoder)"
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


# ---- the TAEF2 network (key names follow the original nn.Sequential) ---------------------------
def _conv(c_in: int, c_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, **kw)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """conv-ReLU-conv-ReLU-conv plus a skip, then ReLU; with ``gn`` the input first gets the residual
    1x1 -> GroupNorm(4) -> ReLU -> 1x1 "pool" branch."""

    def __init__(self, c_in: int, c_out: int, gn: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(c_in, c_out), nn.ReLU(), _conv(c_out, c_out), nn.ReLU(), _conv(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.pool = (nn.Sequential(nn.Conv2d(c_in, 4 * c_in, 1, bias=False), nn.GroupNorm(4, 4 * c_in), nn.ReLU(),
                                   nn.Conv2d(4 * c_in, c_in, 1, bias=False)) if gn else None)
        self.fuse = nn.ReLU()

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def taef2_encoder(latent_channels: int = 32, width: int = 64) -> nn.Sequential:
    layers = [_conv(3, width), Block(width, width)]
    for stage in range(3):
        layers += [_conv(width, width, stride=2, bias=False)] + [Block(width, width, gn=stage == 2) for _ in range(3)]
    return nn.Sequential(*layers, _conv(width, latent_channels))


def taef2_decoder(latent_channels: int = 32, width: int = 64) -> nn.Sequential:
    layers = [Clamp(), _conv(latent_channels, width), nn.ReLU()]
    for stage in range(3):
        layers += [Block(width, width, gn=stage == 0) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
    return nn.Sequential(*layers, Block(width, width), _conv(width, 3))


# ---- backends with one interface: encode_raw / decode_raw in [-1, 1], save, config --------------
class Taef2(nn.Module):
    kind = "taef2"
    downsample = 8

    def __init__(self, latent_channels: int = 32):
        super().__init__()
        self.encoder = taef2_encoder(latent_channels)
        self.decoder = taef2_decoder(latent_channels)
        self.config = SimpleNamespace(latent_channels=latent_channels, in_channels=3, scaling_factor=1.0)
        # channels-last convolutions: encode 1.33x, encode + decode 1.28x faster on one CPU core at 96 px
        # (outputs within 3e-5 of the default layout); callers get standard-layout tensors back
        self.to(memory_format=torch.channels_last)

    def encode_raw(self, images):
        return self.encoder(((images + 1) / 2).contiguous(memory_format=torch.channels_last)).contiguous()

    def decode_raw(self, latents):
        return (self.decoder(latents.contiguous(memory_format=torch.channels_last)).clamp(0, 1) * 2 - 1).contiguous()

    def save_pretrained(self, folder: Path) -> None:
        from safetensors.torch import save_file

        for part, name in zip((self.encoder, self.decoder), TAEF2_FILES):
            save_file({k: v.contiguous() for k, v in part.state_dict().items()}, str(folder / name))
        (folder / "config.json").write_text(json.dumps({"_class_name": "TAEF2", "kind": self.kind,
                                                        "latent_channels": self.config.latent_channels,
                                                        "license": TAEF2_LICENSE}, indent=2) + "\n")

    @classmethod
    def from_folder(cls, folder: Path) -> "Taef2":
        from safetensors.torch import load_file

        model = cls()
        for part, name in zip((model.encoder, model.decoder), TAEF2_FILES):
            try:
                part.load_state_dict(load_file(str(folder / name)), strict=True)
            except Exception as exc:  # SafetensorError, RuntimeError (missing/unexpected keys, shapes)
                raise MupdError(f"{folder / name} could not be loaded as TAEF2 weights ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200]})") from None
        return model


class DiffusersTiny(nn.Module):
    """diffusers' ``AutoencoderTiny`` (TAESD / TAESDXL / TAESD3 ...): unscaled latents in and out."""

    kind = "taesd"

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.config = SimpleNamespace(latent_channels=net.config.latent_channels, in_channels=net.config.in_channels,
                                      scaling_factor=net.config.scaling_factor)
        self.downsample = 2 ** sum(1 for _ in net.config.encoder_block_out_channels[1:])

    @classmethod
    def random(cls, *, latent_channels: int = 4, width: int = 16, levels: int = 3, blocks: int = 1, seed: int = 0):
        """A small randomly initialised AutoencoderTiny (tests; 2**levels downsampling)."""
        from diffusers import AutoencoderTiny

        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            net = AutoencoderTiny(encoder_block_out_channels=(width,) * (levels + 1), decoder_block_out_channels=(width,) * (levels + 1),
                                  num_encoder_blocks=(1,) + (blocks,) * levels, num_decoder_blocks=(blocks,) * levels + (1,),
                                  latent_channels=latent_channels, upsampling_scaling_factor=2)
        finally:
            torch.random.set_rng_state(state)
        return cls(net)

    def encode_raw(self, images):
        return self.net.encode(images).latents

    def decode_raw(self, latents):
        return self.net.decode(latents).sample

    def save_pretrained(self, folder: Path) -> None:
        self.net.save_pretrained(str(folder), safe_serialization=True)

    @classmethod
    def from_folder(cls, folder: Path) -> "DiffusersTiny":
        from diffusers import AutoencoderTiny

        try:
            return cls(AutoencoderTiny.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False))
        except Exception as exc:
            raise MupdError(f"AutoencoderTiny folder {folder} could not be loaded ({type(exc).__name__}); the weights "
                            "are missing, truncated or do not match config.json") from None


def folder_kind(folder: Path) -> str:
    """"kl", "taesd" or "taef2" for an autoencoder folder (config.json's class, or TAEF2's file names)."""
    config = folder / "config.json"
    if config.exists():
        try:
            name = json.loads(config.read_text()).get("_class_name", "AutoencoderKL")
        except (json.JSONDecodeError, AttributeError):
            raise MupdError(f"{config} is not valid JSON; rewrite it or save the autoencoder again") from None
        kinds = {"AutoencoderKL": "kl", "AutoencoderTiny": "taesd", "TAEF2": "taef2"}
        if name not in kinds:
            raise MupdError(f"{config} describes a {name}; mupd reads AutoencoderKL, AutoencoderTiny and TAEF2 folders")
        return kinds[name]
    if all((folder / name).exists() for name in TAEF2_FILES):
        return "taef2"
    raise MupdError(f"{folder} has no config.json (nor {TAEF2_FILES[0]}); it is not an autoencoder folder "
                    "(save one with LatentAutoencoder.save_pretrained, or point at a Stable Diffusion 'vae' folder)")


def models_dirs() -> list[Path]:
    """Where offline pretrained weights are looked for, in order."""
    dirs = [Path(os.environ["MUPD_MODELS"])] if os.environ.get("MUPD_MODELS") else []
    from ..settings import sample_data_dir

    data = sample_data_dir()
    if data is not None:
        dirs.append(data.parent / "models")
    dirs += [_PACKAGE_ROOT.parents[1] / "shared" / "models", Path.cwd().parent / "shared" / "models",
             Path.cwd() / "shared" / "models"]
    return dirs


def find_taef2(required: bool = True) -> Path | None:
    """The offline TAEF2 folder, or a MupdError saying where it was looked for (None if not ``required``)."""
    for base in models_dirs():
        folder = base / "taef2"
        if all((folder / name).exists() for name in TAEF2_FILES):
            return folder.resolve()
    if not required:
        return None
    raise MupdError("the TAEF2 autoencoder weights were not found (looked in $MUPD_MODELS/taef2 and shared/models/taef2 "
                    "beside the sample data); set MUPD_MODELS to the folder holding taef2/, or use a trained autoencoder")
