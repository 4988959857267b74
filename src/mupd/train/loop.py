"""The training loop: flow matching + condition dropout + optional representation alignment.

Every random draw of optimiser step ``k`` (time, noise, condition dropout, CLS noise) comes from a
generator seeded with (seed, k) and is drawn for the whole *global* batch, of which each device
takes its slice (``step.py``). Together with the (seed, epoch) data order (``data.py``) this makes a
run independent of the number of devices and of interruptions: N processes reach the weights of one
process (within float tolerance), and a resumed run the weights of an uninterrupted one (bit-exact
on the CPU with ``deterministic: true``). Checkpoints: ``checkpointing.py``.

A step makes no host sync: losses and the gradient norm stay device tensors and ``fit`` reads the
steps since the last read in one transfer when it logs, previews, checkpoints or stops; the loss is
checked for NaN/inf then (so a non-finite loss is reported at most one log interval late).

    from mupd.train import TrainConfig, train
    result = train(TrainConfig.from_yaml("configs/pcam-tiny.yaml"))
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..errors import MupdError
from ..settings import enable_tf32, settings
from . import components as C
from . import distributed as D
from .checkpointing import CheckpointMixin
from .config import TrainConfig
from .data import TrainData, from_folder, from_shards
from .step import StepMixin, autocast, autocast_dtype, metrics_to_host


class Trainer(StepMixin, CheckpointMixin):
    """Holds model, EMA, optimiser, data and progress; ``fit()`` trains to ``total_images``."""

    def __init__(self, config: TrainConfig, *, data: TrainData | None = None, vae=None, device: str | None = None, resume: str | bool | None = "auto"):
        self.cfg = cfg = config.validate()
        self.dist = D.init_distributed(settings.torch_device(device))
        self.device = self.dist.device
        enable_tf32(self.device)
        self.out = Path(cfg.output)
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.accum = cfg.accumulation_steps(self.dist.world_size)
        self.autocast_dtype = autocast_dtype(cfg.precision, self.device)
        self.vae = vae if vae is not None else C.load_vae(cfg.vae.path, self.device)
        self.source_vae = C.load_vae(cfg.vae.source_path, self.device)
        self.align_encoder = C.build_align_encoder(cfg, self.device)
        self.data = data if data is not None else self._load_data()
        self.encoders = C.build_encoders(cfg, self.device, vocabulary=getattr(self.data, "vocabulary", None))
        self._add_alignment_targets()
        self.model = self._build_model()
        from .ema import EMA

        self.ema = EMA(self.model, cfg.ema.decay, warmup=cfg.ema.warmup)
        # learned condition encoders (RNA token embeddings) train and average like the model
        self.encoder_ema = {m: EMA(e, cfg.ema.decay, warmup=cfg.ema.warmup) for m, e in self.trained_encoders().items()}
        self.projector = self._build_projector()
        from .state import Progress

        self.progress = Progress()
        self.sharded = cfg.parallel == "fsdp" and self.dist.enabled
        self.wrapped = self._wrap(resume)
        # compile around DDP/FSDP, not inside: DDP's buckets and FSDP's hooks are then traced too
        self.train_model = torch.compile(self.wrapped) if cfg.compile else self.wrapped
        self._caption_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._batches, self._batches_at = None, -1  # this rank's batch stream and where it stands
        self._inputs_checked = False

    def _wrap(self, resume) -> torch.nn.Module:
        """Resume, wrap for DDP/FSDP2 and build the optimiser, in the order each needs."""
        bf16 = self.autocast_dtype is not None
        if not self.sharded:
            self.optimizer = self._build_optimizer()
            self._resume(resume)
            return D.wrap_model(self.model, self.dist, self.cfg.parallel, bf16, find_unused=self.unused_parameters_possible())
        # FSDP2 swaps parameters for sharded DTensors: load weights first, build the optimiser after
        self._resume(resume, weights_only=True)
        wrapped = D.wrap_model(self.model, self.dist, "fsdp", bf16)
        self.ema.shard_like(self.model)
        self.optimizer = self._build_optimizer()
        return wrapped

    # --- construction ---------------------------------------------------------------------------
    def _build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW; under FSDP sharded (DTensor) and plain parameters (projector, encoders) go in
        separate groups, as one foreach/fused update cannot mix them."""
        cfg = self.cfg
        params = [p for _, p in self.trainable_parameters()]
        sharded = [p for p in params if D.is_sharded(p)]
        groups = [{"params": sharded}, {"params": [p for p in params if not D.is_sharded(p)]}] if sharded else [{"params": params}]
        # fused: one kernel over all parameters (demo model on 2 CPU threads: 1.0 vs 4.9 ms a step for
        # the per-tensor loop); sharded DTensors keep the default implementation
        fused = self.device.type in ("cuda", "cpu") and not sharded
        return torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay,
            eps=cfg.optim.eps, **({"fused": True} if fused else {}),
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

    def _add_alignment_targets(self) -> None:
        """Encoder targets for alignment, once per training image, unless the shards carry them."""
        data = self.data
        if self.align_encoder is None or "align_patches" in data.tensors:
            return
        if "pixels" not in data.tensors:
            raise MupdError("align.encoder needs the training images (data.source=folder) or shards with align_patches/align_cls")
        from .alignment import encoder_targets

        patches, cls = encoder_targets(self.align_encoder, data.tensors["pixels"], progress=self.cfg.progress and self.dist.is_main)
        data.tensors["align_patches"], data.tensors["align_cls"] = patches, cls

    @property
    def cls_dim(self) -> int | None:
        """Width of the CLS token trained alongside (REG) when the data has encoder CLS targets."""
        return self.model.config.cls_dim if "align_cls" in self.data.tensor_shapes else None

    def unused_parameters_possible(self) -> bool:
        """Whether some trainable model parameter can get no gradient in a micro-batch (DDP then
        needs ``find_unused_parameters``, which costs a graph walk per step). A condition stream
        whose rows are all dropped still runs (rows are masked and zeroed, not skipped), so this
        happens only for a stream this run never feeds or a CLS head without CLS targets."""
        unfed = set(self.model.config.modalities) - set(self.encoders)
        for name, p in self.model.named_parameters():
            parts = set(name.split("."))  # cond_embedders.<m>.*, blocks.i.cross.streams.<m>.*, ...modality_embed.<m>
            if p.requires_grad and (parts & unfed or (parts & {"cls_head"} and not self.cls_dim)):
                return True
        return False

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if self.projector is not None:
            named += [(f"projector.{n}", p) for n, p in self.projector.named_parameters()]
        for m, enc in self.trained_encoders().items():
            named += [(f"encoders.{m}.{n}", p) for n, p in enc.named_parameters() if p.requires_grad]
        return named

    # --- the loop -------------------------------------------------------------------------------
    def fit(self, max_seconds: float | None = None) -> dict:
        """Train until ``total_images`` (or ``max_seconds``); logs, previews, checkpoints in images."""
        from tqdm.auto import tqdm

        from ..settings import ThreadRetuner
        from .metrics_log import MetricsLog

        cfg, info = self.cfg, self.dist
        retune = ThreadRetuner(enabled=self.device.type == "cpu" and not info.enabled and not cfg.deterministic)
        log = MetricsLog(self.out, enabled=info.is_main, tensorboard=cfg.tensorboard, resume_images=self.progress.images_seen)
        bar = tqdm(total=cfg.total_images, initial=self.progress.images_seen, unit="img", unit_scale=True, desc="train", disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
        start, start_images = time.perf_counter(), self.progress.images_seen
        losses, pending = [], []  # pending: device metrics of the steps since the last host read
        stop = False
        while self.progress.images_seen < cfg.total_images and not stop:
            before = self.progress.images_seen
            retune()
            pending.append({**self.train_step(), "images": self.progress.images_seen, "step": self.progress.step})
            now = self.progress.images_seen
            elapsed = time.perf_counter() - start
            ips = (now - start_images) / max(elapsed, 1e-9)
            if max_seconds is not None:  # time-boxed: the bar's end is what the deadline allows
                bar.total = min(cfg.total_images, int(now + ips * max(max_seconds - elapsed, 0.0)))
                stop = D.broadcast_object(elapsed >= max_seconds)
            bar.update(now - before)
            logging = _crossed(before, now, cfg.intervals.log) or now >= cfg.total_images or stop
            preview, checkpoint = _crossed(before, now, cfg.intervals.preview), _crossed(before, now, cfg.intervals.checkpoint)
            if logging or preview or checkpoint:  # one host sync for every step since the last one
                metrics = self._read_metrics(pending, losses)
                pending = []
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{ips:.1f}")
                if logging:
                    log.write({**metrics, "images_per_s": ips, "elapsed_s": elapsed})
            if preview:
                self.preview(self.out / "previews" / f"{now:09d}.png")
            if checkpoint:
                self.save_checkpoint()
        bar.close()
        self._read_metrics(pending, losses)
        self.save_checkpoint()
        log.close()
        elapsed = time.perf_counter() - start
        return {"images_seen": self.progress.images_seen, "steps": self.progress.step, "seconds": elapsed,
                "images_per_s": (self.progress.images_seen - start_images) / max(elapsed, 1e-9), "losses": losses, "checkpoint": str(self.checkpoint_dir)}

    def _read_metrics(self, pending: list[dict], losses: list[float]) -> dict | None:
        """Bring the pending steps' metrics to the host (appending their losses), refusing a
        non-finite loss; returns the last step's metrics."""
        values = metrics_to_host(pending)
        for m in values:
            if not math.isfinite(m["loss"]):
                raise MupdError(f"the training loss became {m['loss']} at {m['images'] - self.cfg.batch.global_size} images; lower optim.lr or check the data for NaN")
            losses.append(m["loss"])
        return values[-1] if values else None

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
        if not self.dist.is_main or self.vae is None or "source_latent" in self.data.tensor_shapes or self.sharded:
            return None
        from .preview import labelled_grid, sample_images, save_png

        p = self.cfg.preview
        n = p.per_condition
        rows = []
        for i, (label, cond) in enumerate(self.preview_conditions()):
            cond = {m: (tok.expand(n, *tok.shape[1:]), mask.expand(n, *mask.shape[1:])) for m, (tok, mask) in cond.items()}
            with autocast(self.device, self.autocast_dtype):
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
