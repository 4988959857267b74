"""The training loop: flow matching + condition dropout + optional representation alignment.

Every random draw of optimiser step ``k`` (time, noise, condition dropout, CLS noise) comes from a
generator seeded with (seed, k) and is drawn for the whole *global* batch, of which each device
takes its slice. Together with the (seed, epoch) data order (``data.py``) this makes a run
independent of the number of devices and of interruptions: N processes reach the weights of one
process (within float tolerance), and a resumed run the weights of an uninterrupted one (bit-exact
on the CPU with ``deterministic: true``).

    from mupd.train import TrainConfig, train
    result = train(TrainConfig.from_yaml("configs/pcam-tiny.yaml"))
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from ..errors import MupdError
from ..settings import settings
from . import components as C
from . import distributed as D
from .config import TrainConfig
from .data import TrainData, from_folder, from_shards
from .schedule import apply_lr, lr_at


class Trainer:
    """Holds model, EMA, optimiser, data and progress; ``fit()`` trains to ``total_images``."""

    def __init__(self, config: TrainConfig, *, data: TrainData | None = None, vae=None, device: str | None = None, resume: str | bool | None = "auto"):
        self.cfg = cfg = config.validate()
        self.dist = D.init_distributed(settings.torch_device(device))
        self.device = self.dist.device
        self.out = Path(cfg.output)
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.accum = cfg.accumulation_steps(self.dist.world_size)
        self.autocast_dtype = _autocast_dtype(cfg.precision, self.device)
        self.vae = vae if vae is not None else C.load_vae(cfg.vae.path, self.device)
        self.source_vae = C.load_vae(cfg.vae.source_path, self.device)
        self.align_encoder = C.build_align_encoder(cfg, self.device)
        if data is None:
            data = self._load_data()
        self.data = data
        self.encoders = C.build_encoders(cfg, self.device, vocabulary=getattr(data, "vocabulary", None))
        if self.align_encoder is not None and "align_patches" not in data.tensors:
            if "pixels" not in data.tensors:
                raise MupdError("align.encoder needs the training images (data.source=folder) or shards with align_patches/align_cls")
            from .alignment import encoder_targets

            patches, cls = encoder_targets(self.align_encoder, data.tensors["pixels"], progress=cfg.progress and self.dist.is_main)
            data.tensors["align_patches"], data.tensors["align_cls"] = patches, cls
        self.model = self._build_model()
        from .ema import EMA

        self.ema = EMA(self.model, cfg.ema.decay, warmup=cfg.ema.warmup)
        # learned condition encoders (RNA token embeddings) train and average like the model
        self.encoder_ema = {m: EMA(e, cfg.ema.decay, warmup=cfg.ema.warmup) for m, e in self.trained_encoders().items()}
        self.projector = self._build_projector()
        from .state import Progress

        self.progress = Progress()
        bf16 = self.autocast_dtype is not None
        self.sharded = cfg.parallel == "fsdp" and self.dist.enabled
        if self.sharded:
            # FSDP2 swaps parameters for sharded DTensors: load weights first, build the optimiser after
            self._resume(resume, weights_only=True)
            self.train_model = D.wrap_model(self.model, self.dist, cfg.parallel, bf16)
            self.optimizer = self._build_optimizer()
        else:
            self.optimizer = self._build_optimizer()
            self._resume(resume)
            model = torch.compile(self.model) if cfg.compile else self.model
            self.train_model = D.wrap_model(model, self.dist, cfg.parallel, bf16)
        if cfg.compile and self.sharded:
            self.train_model = torch.compile(self.train_model)
        self._caption_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._batches, self._batches_at = None, -1  # this rank's batch stream and where it stands

    # --- construction ---------------------------------------------------------------------------
    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.AdamW(
            [p for _, p in self.trainable_parameters()], lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay,
            eps=cfg.optim.eps, **({"fused": True} if self.device.type == "cuda" else {}),
        )

    def _load_data(self) -> TrainData:
        cfg = self.cfg
        if cfg.data.source == "shards":
            return from_shards(cfg)
        return from_folder(cfg, self.vae, keep_pixels=self.align_encoder is not None, progress=cfg.progress and self.dist.is_main)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.data.latent_shape)

    def _build_model(self):
        from .finetune import finetuned_model, freeze, fresh_model

        cfg = self.cfg
        shapes = self.data.tensor_shapes
        cond_dims = {m: int(shapes[m][-1]) if m in shapes else int(enc.width) for m, enc in self.encoders.items()}
        extra = int(shapes["source_latent"][0]) if "source_latent" in shapes else 0
        cls_dim = int(shapes["align_cls"][0]) if "align_cls" in shapes else None
        if cfg.finetune.init_from:
            model = finetuned_model(cfg, latent_shape=self.latent_shape, extra_in_channels=extra, cond_dims=cond_dims, cls_dim=cls_dim)
        else:
            c, h, w = self.latent_shape
            model = fresh_model(cfg, latent_channels=c, latent_size=h, extra_in_channels=extra, cond_dims=cond_dims, cls_dim=cls_dim)
        mc = model.config
        if mc.input_size != self.latent_shape[1] or mc.in_channels != self.latent_shape[0]:
            raise MupdError(f"the model expects {mc.in_channels}x{mc.input_size}x{mc.input_size} latents but the data holds {self.latent_shape}; check data.image_size and the VAE")
        if mc.extra_in_channels != extra:
            raise MupdError(f"the model takes {mc.extra_in_channels} extra input channels but the data's source_latent has {extra}")
        freeze(model, cfg.finetune.freeze)
        return model.to(self.device).train()

    def _build_projector(self):
        if self.align_encoder is None:
            return None
        from .alignment import ConvProjector

        target_dim = int(self.data.tensor_shapes["align_patches"][-1])
        torch.manual_seed(self.cfg.seed + 17)
        return ConvProjector(self.model.config.hidden_size, target_dim, self.cfg.align.projector_dim).to(self.device)

    def trained_encoders(self) -> dict:
        return {m: e for m, e in self.encoders.items() if any(p.requires_grad for p in e.parameters())}

    def inference_encoders(self) -> dict:
        """The condition encoders that go with the EMA model: a trained encoder's EMA copy."""
        return {m: (self.encoder_ema[m].module if m in self.encoder_ema else e) for m, e in self.encoders.items()}

    def extra_modules(self) -> dict | None:
        """Trained modules outside the model, saved and restored with ``train_state``."""
        extra = {f"encoder.{m}": e for m, e in self.trained_encoders().items()}
        if self.projector is not None:
            extra["projector"] = self.projector
        return extra or None

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if self.projector is not None:
            named += [(f"projector.{n}", p) for n, p in self.projector.named_parameters()]
        for m, enc in self.trained_encoders().items():
            named += [(f"encoders.{m}.{n}", p) for n, p in enc.named_parameters() if p.requires_grad]
        return named

    # --- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def _resume(self, resume, weights_only: bool = False) -> None:
        if resume in (None, False):
            return
        folder = self.checkpoint_dir if resume in (True, "auto") else Path(resume)
        if not (folder / "train_state" / "state.json").exists():
            if resume not in (True, "auto"):
                raise MupdError(f"--resume {folder}: no train_state/state.json there; pass a checkpoint folder written by 'mupd train'")
            if resume is True:
                raise MupdError(f"--resume: {folder} holds no checkpoint yet; start without --resume")
            return
        from ..checkpoint import load_into
        from .state import load_train_state

        C.warn_config_changes(folder / "train_state" / "config.yaml", self.cfg, self.dist.is_main)

        load_into(self.model, folder / "model" / "model.safetensors")
        C.load_encoder_weights(self.encoders, folder)  # trained ones: their EMA, raw weights follow
        C.load_encoder_weights({m: ema.module for m, ema in self.encoder_ema.items()}, folder)
        if (folder / "model" / "ema.safetensors").exists():
            load_into(self.ema.module, folder / "model" / "ema.safetensors")
        optimizer = None if weights_only else self.optimizer
        self.progress = load_train_state(folder / "train_state", optimizer=optimizer, params=dict(self.trainable_parameters()), extra_modules=self.extra_modules())
        self.ema.num_updates = self.progress.step
        for ema in self.encoder_ema.values():
            ema.num_updates = self.progress.step
        if weights_only and self.dist.is_main:
            print("mupd train: FSDP resume restores weights, EMA, data position and RNG; the AdamW moments restart", flush=True)
        if self.dist.is_main:
            print(f"mupd train: resumed from {folder} at {self.progress.images_seen} images", flush=True)

    def save_checkpoint(self) -> Path | None:
        """Pipeline folder + train_state/, written atomically by rank 0 (all ranks call this)."""
        from ..checkpoint import atomic_folder
        from .state import save_train_state

        sharded = self.cfg.parallel == "fsdp" and self.dist.enabled
        state = D.full_state_dict(self.train_model, "fsdp") if sharded else None  # collective: every rank
        if self.dist.is_main:
            with atomic_folder(self.checkpoint_dir) as tmp:
                C.save_pipeline(tmp, self, state)
                names = {id(p): n for n, p in self.trainable_parameters()}
                save_train_state(tmp / "train_state", optimizer=None if self.sharded else self.optimizer, param_names=names, progress=self.progress, config_yaml=self.cfg.to_yaml(), extra_modules=self.extra_modules())
        D.barrier()
        return self.checkpoint_dir if self.dist.is_main else None

    # --- one optimiser step ---------------------------------------------------------------------
    def _step_randomness(self, step: int) -> dict:
        """Global-batch draws for step ``step`` (identical on every rank and after a resume)."""
        from ..flow import drop_conditions

        cfg = self.cfg
        G = cfg.batch.global_size
        g = torch.Generator().manual_seed(int(cfg.seed) * 7_919 + int(step) * 104_729 + 1)
        if cfg.time_sampling == "uniform":
            t = torch.rand(G, generator=g)
        else:
            t = torch.sigmoid(torch.randn(G, generator=g))
        noise = torch.randn((G, *self.latent_shape), generator=g)
        out = {"t": t, "noise": noise}
        if "align_cls" in self.data.tensor_shapes and self.model.config.cls_dim:
            out["cls_noise"] = torch.randn((G, self.model.config.cls_dim), generator=g)
        # drop_conditions on one placeholder token per sample: which rows it empties is the keep mask
        dummy = {m: (torch.zeros(G, 1, 1), torch.ones(G, 1, dtype=torch.bool)) for m in self.encoders}
        dropped = drop_conditions(dummy, p_each=cfg.dropout.p_each, p_all=cfg.dropout.p_all, generator=g) if dummy else {}
        out["keep"] = {m: _mask_of(dropped.get(m)).reshape(G, -1).any(1) for m in self.encoders}
        return out

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
                    tokens, mask = enc.encode(batch[spec.field].to(self.device))
            mask = mask.to(self.device) & keep[modality].to(self.device).unsqueeze(1)
            conditions[modality] = (tokens.to(self.device), mask)
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

    def train_step(self) -> dict:
        from ..flow import interpolate

        cfg, info = self.cfg, self.dist
        G, W = cfg.batch.global_size, info.world_size
        per = cfg.batch.per_device
        step = self.progress.step
        if self._batches is None or self._batches_at != self.progress.images_seen:
            self._batches = self.data.batches(seed=cfg.seed, start=self.progress.images_seen, global_size=G, rank=info.rank, world=W)
        mine = next(self._batches)
        self._batches_at = self.progress.images_seen + G
        rnd = self._step_randomness(step)
        lr = lr_at(self.progress.images_seen, cfg.optim.lr, cfg.schedule, cfg.total_images)
        apply_lr(self.optimizer, lr)
        sums = torch.zeros(4, dtype=torch.float64)  # total, velocity, align, cls (sums over samples)
        for micro in range(self.accum):
            batch = _rows(mine, slice(micro * per, (micro + 1) * per))
            part = batch["position"] - self.progress.images_seen  # rows of the global-batch draws
            x0 = batch["latent"].to(self.device)
            t = rnd["t"][part].to(self.device)
            x_t, v_target = interpolate(x0, rnd["noise"][part].to(self.device), t)
            if "source_latent" in batch:
                x_t = torch.cat([x_t, batch["source_latent"].to(self.device, x_t.dtype)], 1)
            conditions = self._conditions(batch, {m: k[part] for m, k in rnd["keep"].items()})
            kwargs = {}
            cls_target = None
            if "cls_noise" in rnd:
                cls0 = batch["align_cls"].to(self.device)
                cls_t, cls_target = interpolate(cls0, rnd["cls_noise"][part].to(self.device), t)
                kwargs["cls"] = cls_t
            sync = micro == self.accum - 1
            ctx = self.train_model.no_sync() if (not sync and hasattr(self.train_model, "no_sync")) else contextlib.nullcontext()
            with ctx:
                with _autocast(self.device, self.autocast_dtype):
                    if self.projector is not None:
                        v, extras = self.train_model(x_t, t, conditions, return_extras=True, **kwargs)
                    else:
                        v = self.train_model(x_t, t, conditions)
                loss_v = (v.float() - v_target.float()).pow(2).flatten(1).mean(1)
                loss = loss_v
                terms = [loss_v.detach().sum(), torch.zeros((), device=self.device), torch.zeros((), device=self.device)]
                if self.projector is not None:
                    from .alignment import alignment_loss

                    loss_a = alignment_loss(self.projector, extras["hidden"], batch["align_patches"].to(self.device))
                    loss = loss + cfg.align.weight * loss_a
                    terms[1] = loss_a.detach().sum()
                    if cls_target is not None:
                        loss_c = (extras["cls_v"].float() - cls_target.float()).pow(2).mean(1)
                        loss = loss + cfg.align.cls_weight * loss_c
                        terms[2] = loss_c.detach().sum()
                # sum over samples / global batch, x world because DDP averages gradients
                (loss.sum() * (W / G)).backward()
                sums += torch.stack([loss.detach().sum().cpu(), *(x.cpu() for x in terms)]).double()
        if W > 1:  # modules outside DDP: reduce their gradients before the norm is taken
            for module in (self.extra_modules() or {}).values():
                _all_reduce_grads(module, W)
        params = [p for _, p in self.trainable_parameters()]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _ema_update(self.ema, self.model, cfg.parallel == "fsdp" and W > 1)
        for m, ema in self.encoder_ema.items():
            ema.update(self.encoders[m])
        self.progress.step += 1
        self.progress.images_seen += G
        self.progress.epoch, self.progress.position_in_epoch = divmod(self.progress.images_seen, len(self.data))
        sums = D.all_reduce_sum(sums) / G
        return {"loss": sums[0].item(), "loss_v": sums[1].item(), "loss_align": sums[2].item(), "loss_cls": sums[3].item(), "lr": lr, "grad_norm": float(grad_norm)}

    # --- the loop -------------------------------------------------------------------------------
    def fit(self, max_seconds: float | None = None) -> dict:
        """Train until ``total_images`` (or ``max_seconds``); logs, previews, checkpoints in images."""
        from tqdm.auto import tqdm

        from .metrics_log import MetricsLog

        cfg, info = self.cfg, self.dist
        log = MetricsLog(self.out, enabled=info.is_main, tensorboard=cfg.tensorboard, resume_images=self.progress.images_seen)
        bar = tqdm(total=cfg.total_images, initial=self.progress.images_seen, unit="img", unit_scale=True, desc="train", disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
        start = time.perf_counter()
        start_images = self.progress.images_seen
        losses = []
        stop = False
        while self.progress.images_seen < cfg.total_images and not stop:
            before = self.progress.images_seen
            metrics = self.train_step()
            if not math.isfinite(metrics["loss"]):
                raise MupdError(f"the training loss became {metrics['loss']} at {before} images; lower optim.lr or check the data for NaN")
            losses.append(metrics["loss"])
            now = self.progress.images_seen
            elapsed = time.perf_counter() - start
            ips = (now - start_images) / max(elapsed, 1e-9)
            if max_seconds is not None:  # time-boxed: the bar's end is what the deadline allows
                bar.total = min(cfg.total_images, int(now + ips * max(max_seconds - elapsed, 0.0)))
            bar.update(now - before)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{ips:.1f}")
            if max_seconds is not None:
                stop = D.broadcast_object(elapsed >= max_seconds)
            if _crossed(before, now, cfg.intervals.log) or now >= cfg.total_images or stop:
                log.write({"images": now, "step": self.progress.step, **metrics, "images_per_s": ips, "elapsed_s": elapsed})
            if _crossed(before, now, cfg.intervals.preview):
                self.preview(self.out / "previews" / f"{now:09d}.png")
            if _crossed(before, now, cfg.intervals.checkpoint):
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        log.close()
        elapsed = time.perf_counter() - start
        return {"images_seen": self.progress.images_seen, "steps": self.progress.step, "seconds": elapsed,
                "images_per_s": (self.progress.images_seen - start_images) / max(elapsed, 1e-9), "losses": losses, "checkpoint": str(self.checkpoint_dir)}

    def preview_conditions(self) -> list[tuple[str, dict]]:
        """(label, one-sample conditions) per distinct caption (text runs) or one unconditional row."""
        if "text" not in self.encoders:
            return [("unconditional", {})]
        captions = list(dict.fromkeys(self.data.captions))[:8]
        rows = []
        for caption in captions:
            tokens, mask = self._encode_captions(self.encoders["text"], [caption])
            rows.append((caption, {"text": (tokens, mask)}))
        return rows

    @torch.no_grad()
    def preview(self, path: Path) -> Path | None:
        if not self.dist.is_main or self.vae is None or "source_latent" in self.data.tensor_shapes or self.cfg.parallel == "fsdp":
            return None
        from .preview import labelled_grid, sample_images, save_png

        p = self.cfg.preview
        n = p.per_condition
        rows = []
        for i, (label, cond) in enumerate(self.preview_conditions()):
            cond = {m: (tok.expand(n, *tok.shape[1:]), mask.expand(n, *mask.shape[1:])) for m, (tok, mask) in cond.items()}
            with _autocast(self.device, self.autocast_dtype):
                images = sample_images(self.ema.module, self.vae, cond, n, self.latent_shape, method=p.method, steps=p.steps,
                                       guidance=p.guidance if cond else None, seed=self.cfg.seed + i)
            rows.append((label, images))
        return save_png(labelled_grid(rows), path)


def train(config: TrainConfig, *, data: TrainData | None = None, vae=None, device: str | None = None, resume="auto", max_seconds: float | None = None) -> dict:
    """Build a Trainer and run it; returns a summary dict (images seen, images/s, losses, checkpoint)."""
    trainer = Trainer(config, data=data, vae=vae, device=device, resume=resume)
    try:
        return trainer.fit(max_seconds=max_seconds)
    finally:
        D.shutdown_distributed()


# --- helpers ----------------------------------------------------------------------------------
def _crossed(before: int, now: int, every: int) -> bool:
    return every > 0 and before // every != now // every


def _rows(batch: dict, rows: slice) -> dict:
    return {k: v[rows] for k, v in batch.items()}


def _mask_of(entry) -> torch.Tensor:
    if entry is None:
        return torch.zeros(1, dtype=torch.bool)
    return entry[1] if isinstance(entry, (tuple, list)) else torch.ones(entry.shape[0], dtype=torch.bool)


def _autocast_dtype(precision: str, device: torch.device):
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return settings.autocast_dtype(device)


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def _ema_update(ema, model, sharded: bool) -> None:
    """EMA step; under FSDP the sharded parameters are gathered (the EMA copy stays whole)."""
    if not sharded:
        ema.update(model)
        return
    own = dict(ema.module.named_parameters())
    decay = ema.current_decay()
    for name, p in D.unwrap(model).named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        own[name].lerp_(full.detach().to(own[name].dtype), 1.0 - decay)
    ema.num_updates += 1


def _all_reduce_grads(module: torch.nn.Module, world: int) -> None:
    for p in module.parameters():
        if p.grad is not None:
            D.all_reduce_sum(p.grad)
            p.grad /= world
