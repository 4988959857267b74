"""One optimiser step of the trainer: global-batch randomness, micro-batch losses through
``flow.flow_matching_loss``, gradient reduction, clipping, AdamW and the EMA.

Everything stays on the training device: the loss sums and the gradient norm come back as device
tensors, so a step makes no host sync (``fit`` reads them once per log interval). Every random draw
of step ``k`` (time, noise, condition dropout, CLS noise) comes from a generator seeded with
(seed, k) and is drawn for the whole *global* batch; each rank takes the rows of its samples'
global positions, which makes N processes reach the weights of one process.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import MupdError
from ..settings import settings
from . import distributed as D
from .schedule import apply_lr, lr_at

METRICS = ("loss", "loss_v", "loss_align", "loss_cls")  # per-step sums over samples, in this order


def step_randomness(cfg, step: int, latent_shape: tuple[int, ...], modalities, cls_dim: int | None) -> dict:
    """Global-batch draws for step ``step`` (identical on every rank and after a resume)."""
    from ..flow import drop_conditions, sample_time

    G = cfg.batch.global_size
    g = torch.Generator().manual_seed(int(cfg.seed) * 7_919 + int(step) * 104_729 + 1)
    out = {"t": sample_time(G, cfg.time_sampling, generator=g)}
    out["noise"] = torch.randn((G, *latent_shape), generator=g)
    if cls_dim:
        out["cls_noise"] = torch.randn((G, cls_dim), generator=g)
    # drop_conditions on one placeholder token per sample: which rows it empties is the keep mask
    dummy = {m: (torch.zeros(G, 1, 1), torch.ones(G, 1, dtype=torch.bool)) for m in modalities}
    dropped = drop_conditions(dummy, p_each=cfg.dropout.p_each, p_all=cfg.dropout.p_all, generator=g) if dummy else {}
    out["keep"] = {m: dropped[m][1].reshape(G, -1).any(1) for m in modalities}
    return out


def autocast_dtype(precision: str, device: torch.device):
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return settings.autocast_dtype(device)


def autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def metrics_to_host(pending: list[dict]) -> list[dict]:
    """Device metrics of several steps -> floats, in one host sync."""
    if not pending:
        return []
    keys = [*METRICS, "grad_norm"]
    values = torch.stack([torch.stack([m[k].detach().float().reshape(()).to(pending[0]["loss"].device) for k in keys]) for m in pending]).tolist()
    return [{**{k: m[k] for k in m if k not in keys}, **dict(zip(keys, row))} for m, row in zip(pending, values)]


class StepMixin:
    """``Trainer.train_step`` and what it calls (the Trainer holds cfg, model, optimiser, data)."""

    def _next_global_batch(self) -> dict:
        """This rank's part of the next global batch (the stream restarts after a jump, e.g. a resume)."""
        cfg, info = self.cfg, self.dist
        if self._batches is None or self._batches_at != self.progress.images_seen:
            self._batches = self.data.batches(seed=cfg.seed, start=self.progress.images_seen, global_size=cfg.batch.global_size,
                                              rank=info.rank, world=info.world_size)
        mine = next(self._batches)
        self._batches_at = self.progress.images_seen + cfg.batch.global_size
        return mine

    def train_step(self) -> dict:
        """One optimiser step over a global batch; returns device tensors (``metrics_to_host``) and the LR."""
        cfg = self.cfg
        G, W, per = cfg.batch.global_size, self.dist.world_size, cfg.batch.per_device
        mine = self._next_global_batch()
        rnd = step_randomness(cfg, self.progress.step, self.latent_shape, list(self.encoders), self.cls_dim)
        lr = lr_at(self.progress.images_seen, cfg.optim.lr, cfg.schedule, cfg.total_images)
        apply_lr(self.optimizer, lr)
        sums = torch.zeros(len(METRICS), device=self.device)  # sums over samples, reduced on the device
        for micro in range(self.accum):
            batch = {k: v[micro * per:(micro + 1) * per] for k, v in mine.items()}
            with D.gradient_sync(self.train_model, enabled=micro == self.accum - 1):
                terms = self._micro_batch_losses(batch, rnd)  # (B, len(METRICS))
                # sum over samples / global batch, x world because DDP and FSDP average gradients
                (terms[:, 0].sum() * (W / G)).backward()
            sums += terms.detach().sum(0)
        grad_norm = self._apply_gradients()
        self.progress.step += 1
        self.progress.images_seen += G
        self.progress.epoch, self.progress.position_in_epoch = divmod(self.progress.images_seen, len(self.data))
        sums = D.all_reduce_sum(sums) / G
        return {**dict(zip(METRICS, sums.unbind())), "lr": lr, "grad_norm": grad_norm}

    def _micro_batch_losses(self, batch: dict, rnd: dict) -> torch.Tensor:
        """Per-sample (total, velocity, alignment, CLS) losses of one micro-batch, (B, 4)."""
        from ..flow import flow_matching_loss

        cfg, device = self.cfg, self.device
        rows = batch["position"] - self.progress.images_seen  # this micro-batch's rows of the global draws
        x0 = batch["latent"].to(device, non_blocking=True)
        source = batch["source_latent"].to(device, non_blocking=True) if "source_latent" in batch else None
        cls = batch["align_cls"].to(device, non_blocking=True) if "cls_noise" in rnd else None
        conditions = self._conditions(batch, {m: k[rows] for m, k in rnd["keep"].items()})
        if not self._inputs_checked:  # once: the forward itself validates nothing (no host syncs)
            self._check_inputs(x0, source, conditions, cls)
        with autocast(device, self.autocast_dtype):
            loss, extras = flow_matching_loss(
                self.train_model, x0, conditions, t=rnd["t"][rows].to(device), noise=rnd["noise"][rows].to(device),
                cls=cls, cls_noise=rnd["cls_noise"][rows].to(device) if cls is not None else None, cls_weight=cfg.align.cls_weight,
                extra_input=source, reduction="none", return_extras=True,
            )
            zero = torch.zeros_like(loss)
            loss_align = zero
            if self.projector is not None:
                from .alignment import alignment_loss

                loss_align = alignment_loss(self.projector, extras["hidden"], batch["align_patches"].to(device, non_blocking=True))
                loss = loss + cfg.align.weight * loss_align
        return torch.stack([loss, extras["loss_v"], loss_align.detach(), extras.get("loss_cls", zero)], 1)

    def _check_inputs(self, x0, source, conditions, cls) -> None:
        """The model's own input check (shapes, modalities, NaN/inf conditions) on the first micro-batch."""
        if hasattr(self.model, "check_inputs"):
            channels = x0.shape[1] + (0 if source is None else source.shape[1])
            shape = (x0.shape[0], channels, *x0.shape[2:])  # only the shape matters: no concatenated copy
            cls_t = None if cls is None else torch.empty(cls.shape, device="meta")
            self.model.check_inputs(torch.empty(shape, device="meta"), torch.ones(x0.shape[0]), conditions, cls=cls_t)
        self._inputs_checked = True

    def _apply_gradients(self) -> torch.Tensor:
        """Reduce what the wrapper does not, clip, step AdamW and the EMAs; the norm as a device tensor."""
        cfg = self.cfg
        params = [p for _, p in self.trainable_parameters()]
        if self.dist.enabled:  # projector and trained encoders live outside DDP/FSDP
            outside = [p for module in (self.extra_modules() or {}).values() for p in module.parameters()]
            D.all_reduce_mean_grads(outside, self.dist.world_size)
        grad_norm = D.clip_grad_norm(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        for m, ema in self.encoder_ema.items():
            ema.update(self.encoders[m])
        return grad_norm

    # --- conditions -----------------------------------------------------------------------------
    def _conditions(self, batch: dict, keep: dict) -> dict:
        conditions = {}
        for modality, enc in self.encoders.items():
            spec = self.cfg.conditions[modality]
            if modality in batch and f"{modality}_mask" in batch:  # tokens precomputed in the shards
                tokens, mask = batch[modality], batch[f"{modality}_mask"].bool()
            elif modality == "text":
                tokens, mask = self._encode_captions(enc, batch[spec.field])
            else:
                if spec.field not in batch:
                    raise MupdError(f"conditions.{modality}.field={spec.field!r} is not in the training data (fields: {sorted(batch)})")
                with torch.set_grad_enabled(modality in self.encoder_ema):  # learned token embeddings
                    tokens, mask = enc.encode(batch[spec.field].to(self.device, non_blocking=True))
            mask = mask.to(self.device, non_blocking=True) & keep[modality].to(self.device).unsqueeze(1)
            conditions[modality] = (tokens.to(self.device, non_blocking=True), mask)
        return conditions

    def _encode_captions(self, enc, captions: list[str]):
        missing = [c for c in dict.fromkeys(captions) if c not in self._caption_cache]
        if missing:
            with torch.no_grad():
                tokens, mask = enc.encode(missing)
            if len(self._caption_cache) > 8192:
                self._caption_cache.clear()
            for i, c in enumerate(missing):
                self._caption_cache[c] = (tokens[i].to(self.device), mask[i].to(self.device))
        tokens = torch.stack([self._caption_cache[c][0] for c in captions])
        mask = torch.stack([self._caption_cache[c][1] for c in captions])
        return tokens, mask
