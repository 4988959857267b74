"""Slide-level presets of ``mupd align train`` (dataset ``her2st-slides``):

* stage ``align`` (presets ``tangle-slide``: bag <-> RNA; ``mstar-slide``: bag <-> RNA <-> report):
  a MIL aggregator over frozen tile features and RNA/text towers trained with symmetric InfoNCE;
* stage ``distill`` (preset ``mstar-distill``, mSTAR stage 2): the stage-1 aggregator is frozen and
  the tile encoder (the small CNN) learns to reproduce its context-aware per-tile features.

Both stop with a ``MupdError`` when the embeddings collapse (``align.collapse``); checkpoints are
written only while the embeddings are healthy, so the last one before a collapse is kept.

Folder (stage 1): ``config.json`` (format ``mupd-align-slide``, model config, align config, report
rule), ``model.safetensors``, ``tile_encoder.safetensors`` (cnn tiles), ``gene_vocabulary.json``,
``trainer_state.json``. Stage 2 writes format ``mupd-align-distilled`` with the distilled encoder in
``tile_encoder.safetensors`` and the projector in ``model.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_folder, load_into, read_json, save_tensors, write_json
from ..errors import require
from .collapse import CollapseGuard
from .config import AlignConfig, replace
from .losses import info_nce, same_text_positives
from .slide import SelfTaughtDistiller, SlideAligner, patch_features
from .slide_data import SlideData
from .towers import SmallRnaTower, SmallTextTower, WordVocabulary, build_tower

FORMAT, DISTILLED = "mupd-align-slide", "mupd-align-distilled"


def _hint(config: AlignConfig) -> str:
    return (f"Try a lower lr (now {config.lr:g}), a larger temperature (now {config.temperature:g}), a larger "
            f"batch_size (now {config.batch_size}) or more data (bags_per_section, now {config.bags_per_section}); "
            "the checkpoint written before the collapse, if any, is kept.")


def _guard(config: AlignConfig) -> CollapseGuard:
    return CollapseGuard(config.collapse_min_std, config.collapse_min_rank, config.collapse_patience, _hint(config))


def build_slide_model(config: AlignConfig, data: SlideData) -> SlideAligner:
    modalities = {m for pair in config.pairs for m in pair} - {"slide"}
    towers = {}
    if "rna" in modalities:
        towers["rna"] = SmallRnaTower(data.vocabulary.genes, config.width, config.embed_dim, config.rna_hidden)
    if "text" in modalities:
        towers["text"] = SmallTextTower(WordVocabulary.build(data.items["text"]), config.width, config.embed_dim,
                                        config.text_depth, max_length=config.text_max_length)
    model = SlideAligner(data.features.shape[-1], towers, config.aggregator, hidden=config.width,
                         embed_dim=config.embed_dim, init_temperature=config.temperature)
    model.set_feature_stats(data.features[data.mask])
    return model


def slide_loss(model: SlideAligner, config: AlignConfig, batch: dict) -> tuple[torch.Tensor, dict]:
    """Mean symmetric InfoNCE over the configured pairs; pairs with text count identical reports as positives."""
    emb = model.embed(batch["features"], batch["mask"], {m: batch[m] for m in model.towers})
    positives = same_text_positives(batch["text"]) if "text" in model.towers else None
    scale = model.logit_scale()
    losses = [info_nce(emb[a], emb[b], scale, positives if "text" in (a, b) else None) for a, b in config.pairs]
    return torch.stack(losses).mean(), emb


def save_slide_model(out: Path, model: SlideAligner, config: AlignConfig, data: SlideData, encoder, state: dict) -> None:
    with atomic_folder(out) as tmp:
        write_json(tmp / "config.json", {"format": FORMAT, "feature_dim": model.feature_dim, "aggregator": config.aggregator,
                                         "towers": {m: t.config() for m, t in model.towers.items()},
                                         "align_config": config.to_dict(), "report_rule": data.report_rule})
        save_tensors(tmp / "model.safetensors", model.state_dict())
        if encoder is not None:
            save_tensors(tmp / "tile_encoder.safetensors", encoder.state_dict())
        if data.vocabulary is not None:
            data.vocabulary.save(tmp / "gene_vocabulary.json")
        write_json(tmp / "trainer_state.json", state)


def load_slide_model(path: str | os.PathLike) -> tuple[SlideAligner, AlignConfig, dict]:
    """(model, config, saved config.json) of a stage-1 folder; never unpickles."""
    path = Path(path)
    require((path / "config.json").is_file(), f"{path} is not a folder written by a slide-level 'mupd align train' "
            "(no config.json); train one with: mupd align train mstar-slide --out DIR")
    saved = read_json(path / "config.json")
    require(saved.get("format") == FORMAT, f"{path / 'config.json'} is not a stage-1 slide model (format != {FORMAT!r})")
    config = replace(AlignConfig(), **saved["align_config"])
    towers = {m: build_tower(m, c) for m, c in saved["towers"].items()}
    model = SlideAligner(saved["feature_dim"], towers, saved["aggregator"], hidden=config.width, embed_dim=config.embed_dim,
                         init_temperature=config.temperature)
    load_into(model, path / "model.safetensors")
    return model.eval(), config, saved


def load_tile_encoder(path: str | os.PathLike, config: AlignConfig):
    """The CNN tile encoder saved with a slide folder (stage 1: the frozen one; stage 2: the distilled one)."""
    from .towers import SmallImageTower

    file = Path(path) / "tile_encoder.safetensors"
    require(file.is_file(), f"{path} has no tile_encoder.safetensors; stage 2 needs a stage-1 run with tile_encoder: cnn")
    encoder = SmallImageTower(config.width, config.embed_dim, config.image_size)
    load_into(encoder, file)
    return encoder.eval().requires_grad_(False)


def _batches(config: AlignConfig, groups: list, samples: int) -> np.ndarray:
    """Bags of one section per batch: with sections mixed, InfoNCE is solved by telling sections apart
    (their stain and batch effects), which says nothing about the regions of an unseen section.
    The batch depends only on (seed, samples seen), as in the patch-level trainer."""
    rng = np.random.default_rng([config.seed, samples])
    groups = np.asarray(groups)
    pool = np.arange(len(groups))
    if config.batch_within_section:
        pool = np.where(groups == rng.choice(sorted(set(groups.tolist()))))[0]
    return rng.choice(pool, min(config.batch_size, len(pool)), replace=False)


def train_slide(config: AlignConfig, out, data: SlideData, *, encoder=None, model: SlideAligner | None = None,
                progress: bool = True) -> SlideAligner:
    """Stage 1. ``encoder``: the tile encoder that made ``data.features`` (saved when it is the CNN)."""
    from tqdm.auto import tqdm

    out = Path(out)
    require(config.bags_per_section >= 2 and len(data) >= 2, "align: slide training needs at least 2 bags per section")
    torch.manual_seed(config.seed)
    model = model if model is not None else build_slide_model(config, data)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    guard, history, samples, step = _guard(config), [], 0, 0
    bar = tqdm(total=config.total_samples, unit="bag", disable=not progress, desc=f"align {config.name}")
    next_ckpt, running = config.checkpoint_every, []
    model.train()
    while samples < config.total_samples:
        torch.manual_seed(config.seed * 1_000_003 + samples)
        loss, emb = slide_loss(model, config, data.batch(_batches(config, data.groups, samples)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples, step = samples + config.batch_size, step + 1
        health = guard.check(step, samples, {m: emb[m] for m in ("slide", "rna") if m in emb})
        running.append(float(loss.detach()))
        bar.update(config.batch_size)
        bar.set_postfix(loss=f"{running[-1]:.3f}", rank=f"{health['slide']['rank']:.1f}")
        if samples % config.log_every < config.batch_size or samples >= config.total_samples:
            history.append({"samples": samples, "loss": float(np.mean(running)), "health": health})
            running = []
        if guard.healthy and (samples >= next_ckpt or samples >= config.total_samples):
            save_slide_model(out, model, config, data, encoder if config.tile_encoder == "cnn" else None,
                             {"samples_seen": samples, "step": step, "history": history})
            next_ckpt += config.checkpoint_every
    bar.close()
    return model.eval()


class _FrozenTargets(torch.nn.Module):
    """The stage-1 model seen by the distiller: per-tile targets only, all frozen."""

    def __init__(self, model: SlideAligner):
        super().__init__()
        self.model = model

    def token_features(self, x, mask=None):
        return self.model.token_features(x, mask)


def distill_slide(config: AlignConfig, out, data: SlideData, *, progress: bool = True) -> SelfTaughtDistiller:
    """Stage 2: distil the frozen stage-1 aggregator (``config.stage1``) into its CNN tile encoder."""
    from tqdm.auto import tqdm

    require(config.stage1 is not None, "stage distill needs stage1: the folder of a stage-1 slide run "
            "(e.g. --set stage1=runs/align/mstar-slide)")
    stage1, config1, _ = load_slide_model(config.stage1)
    student = load_tile_encoder(config.stage1, config1).requires_grad_(True).train()
    torch.manual_seed(config.seed)
    distiller = SelfTaughtDistiller(student, _FrozenTargets(stage1), ema_decay=config.ema_decay, centre=config.distill_centre)
    optimizer = torch.optim.AdamW(distiller.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    guard, history, samples, step = _guard(config), [], 0, 0
    bar = tqdm(total=config.total_samples, unit="bag", disable=not progress, desc=f"distill {config.name}")
    next_ckpt = config.checkpoint_every
    while samples < config.total_samples:
        index = _batches(config, data.groups, samples)
        torch.manual_seed(config.seed * 1_000_003 + samples)
        patches, mask = data.patches(index), data.mask[torch.as_tensor(index)]
        loss = distiller.loss(patches, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        distiller.update_teacher()
        samples, step = samples + config.batch_size, step + 1
        with torch.no_grad():  # monitored: the student's tile features as the stage-1 aggregator sees them
            # (standardised with stage 1's statistics: raw CNN features share a large offset, so their
            # normalised spread is small even when healthy)
            tiles = stage1._standardise(patch_features(distiller.student, patches)[mask])
        health = guard.check(step, samples, {"student": tiles})
        bar.update(config.batch_size)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", rank=f"{health['student']['rank']:.1f}")
        history.append({"samples": samples, "loss": float(loss.detach()), "health": health})
        if guard.healthy and (samples >= next_ckpt or samples >= config.total_samples):
            save_distilled(out, distiller, config, config1, history)
            next_ckpt += config.checkpoint_every
    bar.close()
    return distiller


def save_distilled(out: Path, distiller: SelfTaughtDistiller, config: AlignConfig, config1: AlignConfig, history) -> None:
    with atomic_folder(out) as tmp:
        write_json(tmp / "config.json", {"format": DISTILLED, "tile_encoder": distiller.student.config(),
                                         "align_config": config.to_dict(), "stage1_config": config1.to_dict()})
        save_tensors(tmp / "tile_encoder.safetensors", distiller.student.state_dict())
        save_tensors(tmp / "model.safetensors", distiller.projector.state_dict())
        write_json(tmp / "trainer_state.json", {"samples_seen": history[-1]["samples"] if history else 0, "history": history})
