"""Learning-rate schedule as a pure function of images seen: linear warm-up, then constant or cosine.

Counting in images (not steps) keeps a schedule meaningful when the batch size or the number of
devices changes, and makes resume trivial: the LR is recomputed from ``images_seen``.
"""

from __future__ import annotations

import math

import torch

from .config import ScheduleSection


def lr_at(images_seen: int, base_lr: float, schedule: ScheduleSection, total_images: int) -> float:
    warm = max(int(schedule.warmup_images), 0)
    if warm and images_seen < warm:
        return base_lr * (images_seen + 1) / warm  # never exactly 0 on the first step
    if schedule.kind == "constant":
        return base_lr
    span = max(total_images - warm, 1)
    progress = min(max(images_seen - warm, 0) / span, 1.0)
    floor = base_lr * schedule.min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
