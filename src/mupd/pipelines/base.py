"""``PipelineBase``: the machinery every task pipeline shares (diffusers' ``DiffusionPipeline`` role).

It holds the loaded pipeline folder (model, autoencoders, condition encoders, gene vocabulary) and
the shared steps: turning user conditions into token streams (``conditions``), seeded noise,
encoding/decoding latents and recording every image's generation parameters. The task pipelines
(``generate.GeneratePipeline``, ``vary.VaryPipeline``, ``stain.StainPipeline``,
``translate.TranslatePipeline``) build on it, and ``pipeline.Pipeline`` offers all tasks on one
object. This module imports no task module, so the package has no import circle.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import MupdError, require
from ..settings import settings
from . import conditions
from .options import SAMPLERS, check_sampler, resolve_seed  # noqa: F401 (re-exported)
from .output import PipelineOutput



class PipelineBase:
    def __init__(self, bundle, device: torch.device | str | None = None):
        self.bundle = bundle
        self.device = settings.torch_device(str(device) if device is not None else None)
        self.model = bundle.model.to(self.device).eval()
        self.vae = bundle.vae.to(self.device).eval() if hasattr(bundle.vae, "to") else bundle.vae
        self.source_vae = bundle.source_vae
        if self.source_vae is not None and hasattr(self.source_vae, "to"):
            self.source_vae = self.source_vae.to(self.device).eval()
        self.encoders = {m: (e.to(self.device).eval() if hasattr(e, "to") else e) for m, e in bundle.encoders.items()}
        self.vocabulary = bundle.vocabulary
        self.pathways = bundle.pathways
        self.index: dict = dict(bundle.index)
        self.path = Path(bundle.path) if bundle.path is not None else None

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None, use_ema: bool = True):
        """Load a pipeline folder (``save_bundle`` / ``mupd train`` / ``mupd demo`` output)."""
        from ..bundle import load_bundle

        folder = Path(path)
        if not folder.exists():
            raise MupdError(f"model folder {folder} does not exist; pass the pipeline folder written by "
                            "'mupd train' or 'mupd demo' (it holds model_index.json)")
        if not (folder / "model_index.json").exists():
            raise MupdError(f"{folder} has no model_index.json; it is not a mupd pipeline folder "
                            "(point --model at the folder written by 'mupd train' or 'mupd demo')")
        dev = settings.torch_device(str(device) if device is not None else None)
        return cls(load_bundle(folder, device=dev, use_ema=use_ema), device=dev)

    # ---------------------------------------------------------------------------------- facts
    @property
    def config(self):
        return self.model.config

    @property
    def task(self) -> str:
        return str(self.index.get("task", "generate"))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.config.modalities)

    @property
    def latent_channels(self) -> int:
        return int(self.config.in_channels)

    @property
    def latent_size(self) -> int:
        return int(self.config.input_size)

    @property
    def source_channels(self) -> int:
        return int(getattr(self.config, "extra_in_channels", 0) or 0)

    @property
    def image_size(self) -> int:
        return int(self.index.get("image_size") or self.latent_size * 8)

    @property
    def labels(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.index.get("labels") or {}).items()}

    def model_record(self) -> dict:
        """Model identity for PNG metadata: folder + hash of the resolved config."""
        config = getattr(self.config, "to_dict", None)
        config = config() if callable(config) else _plain_config(self.config)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        return {"path": str(self.path.resolve()) if self.path else None, "config_sha256": digest[:16], "task": self.task}

    # ------------------------------------------------------------------------------ conditions
    def encode_conditions(self, n: int, *, text=None, rna=None, image=None, label=None) -> tuple[dict, list[dict], list[str]]:
        """User conditions -> (model conditions, per-sample records, notes); see ``conditions.encode_conditions``."""
        return conditions.encode_conditions(self, n, text=text, rna=rna, image=image, label=label)

    def rna_vector(self, rna: Any) -> tuple[np.ndarray, str, str]:
        return conditions.rna_vector(self, rna)

    def check_guidance(self, guidance, given: dict):
        return conditions.check_guidance(self, guidance, given)

    def check_scales(self, scales, given: dict):
        return conditions.check_scales(self, scales, given)

    # --------------------------------------------------------------------------------- latents
    def noise(self, seeds: Sequence[int], channels: int | None = None, size: int | None = None) -> torch.Tensor:
        """One noise tensor per seed, drawn on the CPU so the same seed gives the same noise anywhere."""
        c, s = channels or self.latent_channels, size or self.latent_size
        rows = [torch.randn(c, s, s, generator=torch.Generator().manual_seed(int(sd))) for sd in seeds]
        return torch.stack(rows).to(self.device)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, source: bool = False) -> torch.Tensor:
        """Images in [-1, 1] -> standardised latents of the (source) autoencoder."""
        vae = self.source_vae if source and self.source_vae is not None else self.vae
        channels = getattr(vae, "image_channels", pixels.shape[1])
        require(channels == pixels.shape[1],
                f"{self.path}: the autoencoder that must encode the {pixels.shape[1]}-channel source image takes "
                f"{channels} channels; the folder lacks source_vae/ (re-save it with save_bundle(..., source_vae=...))")
        return vae.encode(pixels.to(self.device))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1], clamped."""
        return self.vae.decode(latents).float().clamp(-1, 1)

    def package(self, pixels: torch.Tensor, parameters: list[dict], output_type: str) -> PipelineOutput:
        return PipelineOutput.from_pixels(pixels, parameters, output_type)

    def parameters(self, records: list[dict], seeds: Sequence[int], *, sampler: str, steps: int, guidance,
                   batch_seed: int, **extra) -> list[dict]:
        model = self.model_record()
        out = []
        for i, (rec, seed) in enumerate(zip(records, seeds)):
            params = {
                "mupd:model": model,
                "mupd:conditions": rec,
                "mupd:seed": int(seed),
                "mupd:sampler": sampler,
                "mupd:steps": int(steps),
                "mupd:guidance": guidance,
                "mupd:batch": {"seed": int(batch_seed), "index": i, "n": len(records)},
            }
            params.update({f"mupd:{k}": v for k, v in extra.items() if v is not None})
            out.append(params)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(task={self.task!r}, path={str(self.path)!r}, modalities={list(self.modalities)}, "
                f"image_size={self.image_size}, device={self.device})")


def _plain_config(config) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(vars(config))
