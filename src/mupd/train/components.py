"""What the training loop is built from and writes: autoencoders and frozen encoders named by the
config, the pipeline-folder part of a checkpoint, and the resume-time config comparison."""

from __future__ import annotations

import json
from pathlib import Path



def warn_config_changes(saved_yaml: Path, cfg, show: bool) -> None:
    """A resumed run may change lengths and intervals; anything else deserves a visible note."""
    import yaml

    if not show or not saved_yaml.exists():
        return
    saved, now = yaml.safe_load(saved_yaml.read_text(encoding="utf-8")) or {}, cfg.to_dict()
    ignore = {"output", "total_images", "intervals", "progress", "tensorboard", "preview"}
    changed = sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k))
    if changed:
        print(f"mupd train: note: resuming with changed config sections {changed} (saved config: {saved_yaml})", flush=True)


def load_vae(path, device):
    if not path:
        return None
    from ..encoders.vae import LatentAutoencoder

    return LatentAutoencoder.from_pretrained(path).to(device).eval()


def build_encoders(cfg, device, vocabulary=None) -> dict:
    """The frozen condition encoders. An RNA encoder built fresh takes its genes from the training
    data's gene vocabulary; random initial weights come from a generator seeded by ``cfg.seed``
    (forked, so the model's own initialisation is unchanged) and are saved with every checkpoint."""
    import torch

    from ..encoders import registry
    from ..errors import MupdError

    out = {}
    for modality, spec in cfg.conditions.items():
        kwargs = dict(spec.kwargs)
        if spec.path:
            kwargs["path"] = spec.path
        elif modality == "rna" and "genes" not in kwargs:
            if vocabulary is None:
                raise MupdError("conditions.rna needs the gene order: train on shards encoded with "
                                "'mupd data encode --vocabulary FILE' (they keep gene_vocabulary.json), or set conditions.rna.kwargs.genes")
            kwargs["genes"] = list(vocabulary.genes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed) + 7_331)
            encoder = registry.build(modality, spec.name, **kwargs)
        out[modality] = encoder.to(device).eval().requires_grad_(encoder_trainable(modality, spec))
    return out


def encoder_trainable(modality: str, spec) -> bool:
    """``conditions.<m>.trainable``; unset means: an RNA token encoder built fresh learns its token
    embeddings with the generator (DESIGN), anything loaded from a path stays frozen."""
    if spec.trainable is not None:
        return bool(spec.trainable)
    return modality == "rna" and not spec.path


def load_encoder_weights(encoders: dict, folder: Path) -> None:
    """On resume: the encoders' saved weights (a checkpoint's ``encoders/<m>/model.safetensors``;
    for a trained encoder that is its EMA, and ``train_state`` then restores the raw weights)."""
    from ..checkpoint import load_into

    for modality, encoder in encoders.items():
        file = folder / "encoders" / modality / "model.safetensors"
        if file.exists():
            load_into(encoder, file)


def build_align_encoder(cfg, device):
    if not cfg.align.encoder:
        return None
    from ..encoders import registry

    kwargs = dict(cfg.align.kwargs)
    if cfg.align.path:
        kwargs["path"] = cfg.align.path
    return registry.build("image", cfg.align.encoder, **kwargs).to(device).eval().requires_grad_(False)


def save_pipeline(folder: Path, trainer, gathered: tuple[dict, dict] | None = None) -> None:
    """The pipeline folder part of a checkpoint (model + EMA + VAE + encoder specs). ``gathered``:
    the full (model, EMA) state dicts of a sharded run, saved through plain copies."""
    from ..bundle import save_bundle

    cfg = trainer.cfg
    model, ema = trainer.model, trainer.ema.module
    if gathered is not None:
        from ..models.mupd import MuPD

        model, ema = (_plain_copy(MuPD, trainer.model.config, state) for state in gathered)
    # the built encoders travel with the model: random/learned weights saved, pretrained ones checksummed
    # (a trained encoder is saved as its EMA, to match the model's EMA weights)
    modules = trainer.inference_encoders()
    encoders = {m: (spec.name, dict(spec.kwargs), spec.path, modules[m]) for m, spec in cfg.conditions.items()}
    vocabulary = trainer.data.vocabulary if "rna" in encoders else None
    labels = {}
    if cfg.data.captions:
        labels = {str(k): v for k, v in cfg.data.captions.items()}
    extra = {"task": "translate" if model.config.extra_in_channels else "generate", "labels": labels,
             "image_size": cfg.data.image_size, "source_channels": model.config.extra_in_channels,
             "trained_images": trainer.progress.images_seen}
    if trainer.vae is None:
        model.save_pretrained(folder / "model", ema=ema)
        (folder / "model_index.json").write_text(json.dumps({"format": "mupd-partial", "note": "no vae.path was given", **extra}, indent=2))
        return
    save_bundle(folder, model=model, ema=ema, vae=trainer.vae, source_vae=trainer.source_vae, encoders=encoders,
                vocabulary=vocabulary, extra=extra)


def _plain_copy(cls, config, state: dict):
    """A CPU model holding ``state`` (no random init first: every tensor is overwritten)."""
    module = cls(config, initialize=False)
    module.load_state_dict(state)
    return module
