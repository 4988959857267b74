"""Exponential moving average of a model's weights (kept as an ``nn.Module`` copy for sampling).

    ema = EMA(model, decay=0.9999)
    ...; optimizer.step(); ema.update(model)
    model.save_pretrained(path, ema=ema)      # writes ema.safetensors

Under FSDP2 (``shard_like``) the copy holds only this rank's shard of every parameter, sharded as the
model's: the update is a local ``lerp`` (no communication, no full copy on any rank) and the full
weights are gathered only when a checkpoint is written (``full_state_dict``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import MupdError
from .distributed import full_state_dict, local, unwrap

__all__ = ["EMA", "unwrap"]


class EMA:
    """``ema = decay * ema + (1 - decay) * param`` for floating parameters; buffers are copied.

    ``warmup``: when True the effective decay is ``min(decay, (1 + n) / (10 + n))`` after n updates,
    so early averages are not dominated by the random init.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise MupdError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(unwrap(model)).eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def shard_like(self, model: nn.Module) -> "EMA":
        """Keep only this rank's shard of every parameter the (FSDP2-sharded) ``model`` shards, with
        its mesh and placements; call on every rank after ``fully_shard``."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        theirs = dict(unwrap(model).named_parameters())
        for name, param in list(self.module.named_parameters()):
            other = theirs.get(name)
            if isinstance(other, DTensor) and not isinstance(param, DTensor):
                sharded = distribute_tensor(param.detach().to(other.device), other.device_mesh, other.placements)
                owner, attr = _owner(self.module, name)
                setattr(owner, attr, nn.Parameter(sharded, requires_grad=False))
        return self

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = unwrap(model)
        decay = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        mine, theirs = [], []
        for name, param in model.named_parameters():
            if name not in ema_params:
                raise MupdError(f"EMA.update: parameter {name!r} is not in the EMA copy; the model's structure changed")
            if param.is_floating_point():
                own = local(ema_params[name])  # shards of the same placement under FSDP: a local lerp
                mine.append(own)
                theirs.append(local(param.detach()).to(own.dtype))
        if mine:
            torch._foreach_lerp_(mine, theirs, 1.0 - decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(buf)
        self.num_updates += 1

    def full_state_dict(self, keep: bool = True) -> dict | None:
        """The averaged weights, whole, as CPU tensors (collective when sharded; see distributed)."""
        return full_state_dict(self.module, keep=keep)

    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (e.g. before evaluation)."""
        unwrap(model).load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "warmup": self.warmup, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state.get("decay", self.decay))
        self.num_updates = int(state.get("num_updates", 0))
        self.warmup = bool(state.get("warmup", self.warmup))
        self.module.load_state_dict(state["module"])

    def to(self, *args, **kwargs) -> "EMA":
        self.module.to(*args, **kwargs)
        return self


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (module.get_submodule(path) if path else module), attr
