"""``Pipeline``: a trained pipeline folder ready for inference (generate, vary, stain, translate).

    pipe = Pipeline.from_pretrained("runs/pcam/checkpoint")
    images = pipe(text="a patch of metastatic tumour", n=4, steps=20, guidance={"text": 3.0}, seed=0)
    images[0].save("x.png")              # a PIL image; images.save(folder) keeps the parameters

The class holds the loaded bundle (model, autoencoders, condition encoders, gene vocabulary) and
the shared steps: turning user conditions into token streams, seeded noise, decoding latents and
recording every image's generation parameters. Each task lives in its own module.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import MupdError, require
from ..settings import settings
from .inputs import RnaProfile, image_to_uint8, load_image, match_genes, read_rna
from .output import PipelineOutput
from .pngmeta import sha256_of

SAMPLERS = ("heun", "euler", "euler_maruyama")


class Pipeline:
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
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None, use_ema: bool = True) -> "Pipeline":
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
    def encode_conditions(
        self,
        n: int,
        *,
        text: str | Sequence[str] | None = None,
        rna: Any = None,
        image: Any = None,
        label: Any = None,
    ) -> tuple[dict, list[dict], list[str]]:
        """User conditions -> (model conditions {modality: (tokens, mask)}, per-sample records, notes).

        Each argument is one value (shared by all ``n`` samples) or a list of ``n`` values.
        ``label`` looks up the caption stored with the model (``labels`` in model_index.json).
        """
        records = [dict() for _ in range(n)]
        notes: list[str] = []
        conditions: dict = {}
        if label is not None:
            require(text is None, "give either label= or text=, not both (a label is turned into its caption)")
            labels = self.labels
            require(labels, f"this model has no label captions in {self.path}/model_index.json; pass text= instead")
            chosen = _per_sample(label, n, "label")
            for i, lab in enumerate(chosen):
                require(str(lab) in labels, f"label {lab!r} is not one of the model's labels {sorted(labels)}")
                records[i]["label"] = str(lab)
            text = [labels[str(lab)] for lab in chosen]
        if text is not None:
            texts = _per_sample(text, n, "text")
            require(all(isinstance(t, str) for t in texts), "text must be a string or a list of strings")
            encoder = self._encoder("text")
            conditions["text"] = _expand(encoder.encode(_unique(texts)), texts)
            for rec, t in zip(records, texts):
                rec["text"] = t
        if rna is not None:
            profiles = _per_sample(rna, n, "rna")
            vectors, sources = [], []
            for p in _unique(profiles, key=id):
                vec, source, note = self.rna_vector(p)
                vectors.append(vec)
                sources.append(source)
                if note:
                    notes.append(note)
            batch = torch.from_numpy(np.stack(vectors)).to(self.device)
            # a "vector modality" (e.g. 331 pathway scores) is tokenised inside the model itself
            tokens = batch if self._rna_is_vector() else self._encoder("rna").encode(batch)
            order = {id(p): i for i, p in enumerate(_unique(profiles, key=id))}
            conditions["rna"] = _index(tokens, [order[id(p)] for p in profiles])
            for rec, p in zip(records, profiles):
                i = order[id(p)]
                rec["rna"] = {"source": sources[i], "sha256": sha256_of(vectors[i])[:16]}
        if image is not None:
            refs = _per_sample(image, n, "image")
            loaded = [load_image(r, what="reference image") for r in _unique(refs, key=id)]
            order = {id(r): i for i, r in enumerate(_unique(refs, key=id))}
            encoder = self._encoder("image")
            sizes = {im.size for im in loaded}
            if len(sizes) > 1:  # encoders take one size per batch; encode one by one
                parts = [encoder.encode(image_to_uint8([im]).to(self.device)) for im in loaded]
                tokens = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
            else:
                tokens = encoder.encode(image_to_uint8(loaded).to(self.device))
            conditions["image"] = _index(tokens, [order[id(r)] for r in refs])
            for rec, r in zip(records, refs):
                im = loaded[order[id(r)]]
                rec["image"] = {"source": str(r) if isinstance(r, (str, os.PathLike)) else None,
                                "sha256": sha256_of(im)[:16]}
        return conditions, records, notes

    def _encoder(self, modality: str):
        require(modality in self.modalities,
                f"this model has no '{modality}' condition stream (it has {list(self.modalities)}); "
                f"drop the {modality} input or use a model trained with it")
        require(modality in self.encoders,
                f"{self.path}/model_index.json names no '{modality}' encoder although the model has that stream; "
                "re-save the pipeline with save_bundle(..., encoders={...})")
        return self.encoders[modality]

    def _rna_is_vector(self) -> bool:
        return "rna" in (getattr(self.config, "vector_modalities", None) or {})

    def rna_vector(self, rna: Any) -> tuple[np.ndarray, str, str]:
        """One RNA input -> (model-ready vector, source description, gene-match note).

        Accepts an RNA spec string (see ``inputs.read_rna``), an ``RnaProfile``, a ``{gene: value}``
        dict or a pandas Series (mapped through the vocabulary), or an array already in the
        model's vocabulary order.
        """
        require("rna" in self.modalities,
                f"this model has no 'rna' condition stream (it has {list(self.modalities)}); drop the RNA input")
        if not self._rna_is_vector():
            self._encoder("rna")
        if isinstance(rna, (str, os.PathLike)):
            rna = read_rna(str(rna))
        elif isinstance(rna, Mapping):
            rna = RnaProfile(np.array(list(rna.values()), dtype=np.float32), [str(g) for g in rna], "the given gene dict")
        elif hasattr(rna, "index") and hasattr(rna, "to_numpy"):  # pandas Series
            rna = RnaProfile(rna.to_numpy(np.float32), [str(g) for g in rna.index], f"series {getattr(rna, 'name', '')}")
        if isinstance(rna, RnaProfile):
            require(self.vocabulary is not None,
                    f"{self.path} has no gene_vocabulary.json, so named genes cannot be mapped; pass a vector instead")
            match = match_genes(rna, list(self.vocabulary.genes))
            values, _report = self.vocabulary.transform(rna.values[None, :], rna.genes)
            values = np.asarray(values, dtype=np.float32)
            if self.pathways is not None:
                values = np.asarray(self.pathways.score(values, list(self.vocabulary.genes)), dtype=np.float32)
            vector, source, note = values[0], rna.source, match.summary(rna.source)
        else:
            vector = np.asarray(rna.detach().cpu() if hasattr(rna, "detach") else rna, dtype=np.float32).reshape(-1)
            source, note = "a given vector", ""
        require(np.isfinite(vector).all(), f"RNA {source}: the mapped vector has NaN/inf values; check the input values")
        if self._rna_is_vector():
            width = self.config.vector_modalities["rna"]
        else:
            width = getattr(self.encoders["rna"], "num_genes", None) or getattr(self.encoders["rna"], "input_dim", None)
        if width is not None:
            require(vector.shape[0] == int(width),
                    f"RNA {source}: {vector.shape[0]} values but the model's RNA encoder takes {width}; "
                    "pass named genes so they are mapped through the model's vocabulary")
        return vector, source, note

    def check_guidance(self, guidance, conditions: dict):
        """Validate guidance against the model's streams and the conditions actually given."""
        if guidance is None:
            return None
        if isinstance(guidance, (int, float)):
            require(np.isfinite(guidance), f"guidance must be finite, got {guidance}")
            require(conditions, "guidance was given but no condition (text/rna/image/label) was; nothing to guide towards")
            return float(guidance)
        require(isinstance(guidance, Mapping), f"guidance must be a number or {{modality: scale}}, got {type(guidance).__name__}")
        out = {}
        for modality, scale in guidance.items():
            require(modality in self.modalities,
                    f"guidance for '{modality}', but this model has no {modality} stream (it has {list(self.modalities)})")
            require(modality in conditions, f"guidance for '{modality}' but no {modality} condition was given")
            require(isinstance(scale, (int, float)) and np.isfinite(scale), f"guidance scale for '{modality}' must be a number")
            out[modality] = float(scale)
        return out

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

    # ----------------------------------------------------------------------------------- tasks
    def __call__(self, *args, **kwargs) -> PipelineOutput:
        from .generate import generate

        return generate(self, *args, **kwargs)

    def generate(self, *args, **kwargs) -> PipelineOutput:
        from .generate import generate

        return generate(self, *args, **kwargs)

    def vary(self, image, **kwargs) -> PipelineOutput:
        from .vary import vary

        return vary(self, image, **kwargs)

    def stain(self, image, **kwargs) -> PipelineOutput:
        from .stain import stain

        return stain(self, image, **kwargs)

    def translate(self, image, **kwargs) -> PipelineOutput:
        from .translate import translate

        return translate(self, image, **kwargs)

    def __repr__(self) -> str:
        return (f"Pipeline(task={self.task!r}, path={str(self.path)!r}, modalities={list(self.modalities)}, "
                f"image_size={self.image_size}, device={self.device})")


def resolve_seed(seed: int | None) -> int:
    """A user seed, or a fresh one (recorded in the output so the run can be repeated)."""
    if seed is None:
        return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    require(isinstance(seed, (int, np.integer)) and seed >= 0, f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_sampler(sampler: str, steps: int) -> None:
    require(sampler in SAMPLERS, f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
    require(isinstance(steps, (int, np.integer)) and steps >= 1, f"steps must be a positive integer, got {steps!r}")


def _plain_config(config) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(vars(config))


def _per_sample(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        require(len(value) == n, f"{what}: {len(value)} values given for n={n} samples; give one, or exactly n")
        return list(value)
    return [value] * n


def _unique(values: list, key=None) -> list:
    seen, out = set(), []
    for v in values:
        k = key(v) if key else v
        if k not in seen:
            seen.add(k)
            out.append(v)
    return out


def _expand(encoded, texts: list[str]):
    order = {t: i for i, t in enumerate(_unique(texts))}
    return _index(encoded, [order[t] for t in texts])


def _index(encoded, rows: list[int]):
    """Gather rows of an encoder output ((tokens, mask) or tokens)."""
    idx = torch.as_tensor(rows, dtype=torch.long)
    if isinstance(encoded, tuple):
        return tuple(e[idx.to(e.device)] for e in encoded)
    return encoded[idx.to(encoded.device)]
