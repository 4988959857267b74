"""The trainer's checkpoints: a pipeline folder (model + EMA + VAE + encoders) and ``train_state/``
(optimiser, progress, RNG, projector), written atomically by rank 0; resume restores all of it.

Under FSDP the model and the sharded EMA are gathered one tensor at a time for the write (every
rank takes part); the sharded AdamW moments are not saved, so an FSDP resume restarts them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MupdError
from . import components as C
from . import distributed as D


class CheckpointMixin:
    """``Trainer.save_checkpoint`` and ``Trainer._resume``."""

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

        main = self.dist.is_main
        gathered = None
        if self.sharded:  # collectives: every rank gathers, rank 0 keeps
            gathered = (D.full_state_dict(self.model, keep=main), self.ema.full_state_dict(keep=main))
        if main:
            with atomic_folder(self.checkpoint_dir) as tmp:
                C.save_pipeline(tmp, self, gathered)
                names = {id(p): n for n, p in self.trainable_parameters()}
                save_train_state(tmp / "train_state", optimizer=None if self.sharded else self.optimizer, param_names=names,
                                 progress=self.progress, config_yaml=self.cfg.to_yaml(), extra_modules=self.extra_modules())
        D.barrier()
        return self.checkpoint_dir if main else None
