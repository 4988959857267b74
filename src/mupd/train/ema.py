"""Exponential moving average of a model's weights (kept as an ``nn.Module`` copy for sampling).

    ema = EMA(model, decay=0.9999)
    ...; optimizer.step(); ema.update(model)
    model.save_pretrained(path, ema=ema)      # writes ema.safetensors
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import MupdError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DDP/FSDP (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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
    def update(self, model: nn.Module) -> None:
        model = unwrap(model)
        decay = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        mine, theirs = [], []
        for name, param in model.named_parameters():
            if name not in ema_params:
                raise MupdError(f"EMA.update: parameter {name!r} is not in the EMA copy; the model's structure changed")
            if param.is_floating_point():
                mine.append(ema_params[name])
                theirs.append(param.detach().to(ema_params[name].dtype))
        if mine:
            torch._foreach_lerp_(mine, theirs, 1.0 - decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(buf)
        self.num_updates += 1

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
