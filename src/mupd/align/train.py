"""Contrastive training of the shared space (``mupd align train``): patch-level pairs, AdamW,
intervals in samples, tqdm progress, atomic checkpoints that resume exactly where they stopped.

Checkpoint folder = an ``AlignModel`` folder plus ``optimizer.safetensors`` (AdamW state tensors,
flattened as ``state.<param index>.<name>``) and ``trainer_state.json`` (samples seen, RNG seed,
param-group hyper-parameters and per-parameter step counts). No pickle anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_tensors, read_json, save_tensors, write_json
from ..errors import MupdError, require
from ..settings import settings
from .config import AlignConfig
from .data import PairData, load_pairs
from .losses import multi_pair_loss, same_text_positives
from .model import AlignModel
from .towers import SmallImageTower, SmallRnaTower, SmallTextTower, WordVocabulary


# Fields that may change between a run and its resumption (e.g. training longer).
RESUMABLE_CHANGES = {"total_samples", "log_every", "checkpoint_every", "device", "name"}


def build_model(config: AlignConfig, data: PairData) -> AlignModel:
    modalities = sorted({m for pair in config.pairs for m in pair})
    towers = {}
    for m in modalities:
        require(m in data.items, f"align: dataset '{config.dataset}' has no '{m}' modality (has {sorted(data.items)})")
        if m == "image":
            towers[m] = SmallImageTower(config.width, config.embed_dim, config.image_size)
        elif m == "text":
            prompts = list(data.class_prompts or [])
            vocabulary = WordVocabulary.build(list(data.items["text"]) + prompts)
            towers[m] = SmallTextTower(vocabulary, config.width, config.embed_dim, config.text_depth,
                                       max_length=config.text_max_length)
        else:
            towers[m] = SmallRnaTower(data.vocabulary.genes, config.width, config.embed_dim, config.rna_hidden)
    return AlignModel(towers)


def make_optimizer(model: AlignModel, config: AlignConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # biases, norms, temperature
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


# -- optimizer state without pickle -----------------------------------------------------------------

def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state -> (flat tensors for safetensors, JSON scalars)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = float(value)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state = optimizer.state_dict()
    restored: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        restored.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        restored.setdefault(int(index), {})[key] = torch.tensor(value)
    require(len(meta["param_groups"]) == len(state["param_groups"]), "optimizer state does not match the model's parameter groups")
    for group, saved in zip(state["param_groups"], meta["param_groups"]):
        group.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()})
    state["state"] = restored
    optimizer.load_state_dict(state)


# -- training ---------------------------------------------------------------------------------------

def _augment(images: torch.Tensor) -> torch.Tensor:
    """Random flips and 90° rotations (H&E has no canonical orientation)."""
    if torch.rand(()) < 0.5:
        images = images.flip(-1)
    return torch.rot90(images, int(torch.randint(4, ())), dims=(-2, -1))


def _positives(config: AlignConfig, data: PairData, index, batch) -> torch.Tensor | None:
    """Extra positive pairs, so duplicates (same caption / same label) are not false negatives."""
    if config.positives == "label" and data.labels is not None:
        labels = torch.as_tensor(data.labels[index])
        return labels[:, None] == labels[None, :]
    if config.positives == "text" and "text" in batch:
        return same_text_positives(batch["text"])
    return None


def save_checkpoint(out: Path, model: AlignModel, optimizer, config: AlignConfig, samples: int, vocabulary, history: list) -> None:
    tensors, meta = optimizer_tensors(optimizer)
    model.save_pretrained(out, align_config=config.to_dict(), vocabulary=vocabulary, extra_files={
        "optimizer.safetensors": lambda p: save_tensors(p, tensors),
        "trainer_state.json": lambda p: write_json(p, {"samples_seen": samples, "optimizer": meta, "history": history}),
    })


def train_align(config: AlignConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = True,
                data: PairData | None = None) -> AlignModel:
    """Train (or resume) and write the folder ``out``; returns the trained model."""
    from tqdm.auto import tqdm

    out = Path(out)
    device = settings.torch_device(None if config.device == "auto" else config.device)
    torch.manual_seed(config.seed)
    data = data or load_pairs(config, "train")
    require(len(data) >= config.batch_size, f"align: only {len(data)} training pairs for batch_size {config.batch_size}")
    samples, history = 0, []
    if resume and (out / "trainer_state.json").exists():
        saved = read_json(out / "config.json").get("align_config", {})
        changed = []
        if saved:
            changed = sorted(k for k in set(saved) | set(config.to_dict())
                             if saved.get(k) != config.to_dict().get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise MupdError(f"{out} was trained with a different config (fields {changed}); resume with the same config or a new --out")
        model = AlignModel.from_pretrained(out, device=device)
        optimizer = make_optimizer(model, config)
        state = read_json(out / "trainer_state.json")
        load_optimizer(optimizer, load_tensors(out / "optimizer.safetensors", device), state["optimizer"])
        samples, history = int(state["samples_seen"]), list(state.get("history", []))
    elif resume:
        raise MupdError(f"--resume: {out} holds no checkpoint (no trainer_state.json); drop --resume to start")
    else:
        model = build_model(config, data).to(device)
        optimizer = make_optimizer(model, config)
    modalities = sorted({m for pair in config.pairs for m in pair})
    model.train()
    bar = tqdm(total=config.total_samples, initial=samples, unit="pair", disable=not progress, desc=f"align {config.name}")
    next_log = (samples // config.log_every + 1) * config.log_every
    next_ckpt = (samples // config.checkpoint_every + 1) * config.checkpoint_every
    running = []
    while samples < config.total_samples:
        # Batch, augmentation and dropout depend only on (seed, samples seen): a resumed run
        # continues exactly as an uninterrupted one would.
        index = np.random.default_rng([config.seed, samples]).choice(len(data), config.batch_size, replace=False)
        torch.manual_seed(config.seed * 1_000_003 + samples)
        batch = data.batch(index)
        batch = {m: batch[m] for m in modalities}
        if "image" in batch:
            batch["image"] = _augment(batch["image"])
        with settings.autocast(device):
            emb = model.embed(batch)
            positives = _positives(config, data, index, batch)
            loss, parts = multi_pair_loss(emb, model.logit_scale(), [tuple(p) for p in config.pairs], positives=positives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += config.batch_size
        running.append(float(loss.detach()))
        bar.update(config.batch_size)
        bar.set_postfix(loss=f"{running[-1]:.3f}", temp=f"{1 / float(model.logit_scale().detach()):.3f}")
        if samples >= next_log or samples >= config.total_samples:
            history.append({"samples": samples, "loss": float(np.mean(running)), "logit_scale": float(model.logit_scale().detach())})
            running = []
            next_log += config.log_every
        if samples >= next_ckpt or samples >= config.total_samples:
            save_checkpoint(out, model, optimizer, config, samples, data.vocabulary, history)
            next_ckpt += config.checkpoint_every
    bar.close()
    return model.eval()
