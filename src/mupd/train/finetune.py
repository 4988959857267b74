"""Build the model to train: fresh from a size preset, or a fine-tune of an existing model.

A fine-tune starts from a pipeline/checkpoint folder (``finetune.format: mupd``; EMA weights by
default) or converted weights (``format: dit | sit | repa``, the checkpoint's time/velocity
convention, via ``mupd.models.convert``). It may add
input channels (source latents for translation; their patch-embedding weights are zero, so the
fine-tune starts as exactly the source model's function) and new condition streams (their
adaLN gates start at zero, so they contribute nothing until trained), and freeze parameters by
name pattern (``fnmatch``, e.g. ``"blocks.*.self_attn.*"``).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch

from ..errors import MupdError


def fresh_model(cfg, *, latent_channels: int, latent_size: int, extra_in_channels: int, cond_dims: dict[str, int], cls_dim: int | None):
    from ..models.mupd import MuPD

    overrides = dict(cfg.model.overrides)
    kwargs = dict(
        input_size=latent_size,
        in_channels=latent_channels,
        extra_in_channels=extra_in_channels,
        modalities=tuple(cond_dims),
        cond_dims=dict(cond_dims),
        attention=cfg.model.attention,
        grad_checkpointing=cfg.model.grad_checkpointing,
    )
    if cfg.align.encoder:
        kwargs["repa_block"] = cfg.align.block
        kwargs["cls_dim"] = cls_dim if cfg.align.cls_weight > 0 else None
    kwargs.update(overrides)
    return MuPD.from_preset(cfg.model.preset, **kwargs)


def load_source(cfg, latent_shape: tuple[int, int, int] | None = None):
    """The model a fine-tune starts from (a plain MuPD on the CPU).

    ``latent_shape`` (C, H, W) of the training data sizes a model built for DiT/SiT weights, whose
    checkpoints carry no config (the preset ``cfg.model.preset`` gives width, depth and heads)."""
    ft = cfg.finetune
    path = Path(ft.init_from)
    if ft.format in ("dit", "sit", "repa"):
        return _load_dit(path, cfg.model.preset, cfg.model.overrides, latent_shape, convention=ft.format)
    from ..models.mupd import MuPD

    folder = path / "model" if (path / "model" / "config.json").exists() else path
    if not (folder / "config.json").exists():
        raise MupdError(f"finetune.init_from={path} holds no model config.json (expected a pipeline folder with model/, or a MuPD save_pretrained folder)")
    return MuPD.from_pretrained(folder, use_ema=ft.use_ema)


def _load_dit(path: Path, preset: str, overrides: dict, latent_shape: tuple[int, int, int] | None, convention: str = "dit"):
    from ..models.convert import convention_config, load_dit_weights, read_dit_checkpoint
    from ..models.mupd import MuPD

    state = read_dit_checkpoint(path)
    layout = "diffusers" if any(k.startswith("transformer_blocks.") for k in state) else "dit"
    sizes = dict(overrides)
    if latent_shape is not None:
        sizes.update(in_channels=int(latent_shape[0]), input_size=int(latent_shape[1]))
    # DiT: timesteps in [0, 1000); SiT/REPA: t in [0, 1], SiT with data at t = 1 (convert.py docstring)
    model = MuPD.from_preset(preset, modalities=(), **convention_config(convention, layout), **sizes)
    load_dit_weights(model, state, layout, convention=convention)
    return model


def expand_model(source, *, extra_in_channels: int = 0, add_modalities: dict[str, int] | None = None, **config_changes):
    """A copy of ``source`` with more input channels / condition streams; same function at start.

    Tensors are copied by name; a tensor whose shape grew along dim 1 (the patch embedding's input
    channels) gets the old slice copied and keeps the new model's zero init for the rest."""
    from ..models.config import MuPDConfig
    from ..models.mupd import MuPD

    old = source.config
    data = old.to_dict()
    data["extra_in_channels"] = old.extra_in_channels + extra_in_channels
    for modality, width in (add_modalities or {}).items():
        if modality in old.modalities:
            continue
        data["modalities"] = list(data["modalities"]) + [modality]
        data["cond_dims"] = {**data["cond_dims"], modality: int(width)}
    data.update(config_changes)
    model = MuPD(MuPDConfig.from_dict(data, source="fine-tune config"))
    copy_matching(model, source.state_dict())
    return model


@torch.no_grad()
def copy_matching(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy tensors by name; grow-along-dim-1 tensors get a partial copy. Returns skipped names."""
    own = model.state_dict()
    skipped = []
    for name, value in state.items():
        if name not in own:
            skipped.append(name)
            continue
        target = own[name]
        if target.shape == value.shape:
            target.copy_(value)
        elif target.ndim == value.ndim and target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:] and target.shape[1] > value.shape[1]:
            target[:, : value.shape[1]].copy_(value)
        else:
            raise MupdError(f"fine-tune: tensor '{name}' has shape {tuple(value.shape)} in the source model but {tuple(target.shape)} in the new one; only input channels can grow")
    return skipped


def finetuned_model(cfg, *, latent_shape: tuple[int, int, int], extra_in_channels: int, cond_dims: dict[str, int], cls_dim: int | None):
    source = load_source(cfg, latent_shape)
    have = source.config.extra_in_channels
    grow = max(extra_in_channels - have, 0, cfg.finetune.extra_in_channels)
    add = {m: w for m, w in cond_dims.items() if m not in source.config.modalities}
    for m in cfg.finetune.add_modalities:
        if m not in source.config.modalities and m not in add:
            raise MupdError(f"finetune.add_modalities lists '{m}' but conditions has no encoder for it; add conditions.{m}")
    changes = {"grad_checkpointing": cfg.model.grad_checkpointing}
    # the CLS token exists only where it is trained: a fine-tune without the CLS objective drops the
    # source's CLS head (else it would train on N tokens and sample with N + 1, one of them noise)
    changes["cls_dim"] = cls_dim if (cfg.align.encoder and cfg.align.cls_weight > 0) else None
    if cfg.align.encoder:
        changes["repa_block"] = cfg.align.block
    return expand_model(source, extra_in_channels=grow, add_modalities=add, **changes)


def freeze(model: torch.nn.Module, patterns: list[str]) -> int:
    """Set requires_grad=False on parameters matching any pattern; returns how many were frozen."""
    if not patterns:
        return 0
    count = 0
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
            count += 1
    if count == 0:
        raise MupdError(f"finetune.freeze patterns {patterns} match no parameter; names look like {[n for n, _ in model.named_parameters()][:4]}")
    return count
