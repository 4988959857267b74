"""Data-parallel training under ``torchrun``: DDP (gloo on CPU, NCCL on GPU) or FSDP2 for L/XL.

One GPU or a CPU::

    mupd train configs/pcam-tiny.yaml

Several GPUs on one machine (global batch stays what the config says; each device takes
``batch.per_device`` and the loop accumulates ``global / (per_device x N)`` micro-batches)::

    torchrun --nproc-per-node 8 -m mupd train configs/pcam-S2.yaml

Several machines (run the same line on every node; node 0's address is the rendezvous point)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint node0.example.org:29500 --rdzv-id mupd-run-1 \\
        -m mupd train configs/mupd-XL2-256.yaml

Large presets shard parameters, gradients and optimiser state with FSDP2 (``parallel: fsdp``,
``torch.distributed.fsdp.fully_shard`` per transformer block, bf16 compute / fp32 master weights);
checkpoints gather full state dicts on rank 0, so a run saved under FSDP resumes under DDP or on
one device. The CPU path (gloo) is what the tests run; the NCCL/FSDP path is the same code.

On GPUs the process group is ``cuda:nccl,cpu:gloo``: every reduction of the step (gradients, loss
sums, the gradient norm) runs on the device through NCCL, while CPU objects (``broadcast_object``)
still have a backend. Modules outside the DDP/FSDP wrapper (alignment projector, trained condition
encoders) stay plain tensors: their gradients are all-reduced in one flat bucket and the gradient
norm is taken per group (sharded DTensors, plain tensors) and combined.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise single."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kwargs = {}
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    if not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(device), timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistInfo(rank, world, local_rank, device)


def process_group_backend(device: torch.device) -> str:
    """NCCL for CUDA tensors plus gloo for CPU objects on GPUs (plain "nccl" has no CPU collectives)."""
    return "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # a rank leaving while another still has collectives in flight aborts gloo
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks, on the tensor's own device (keep it on the training device)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(obj, src: int = 0):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, device=torch.device("cpu"))  # gloo: no GPU round trip
    return holder[0]


# --- wrapping -----------------------------------------------------------------------------------
def wrap_model(model: nn.Module, info: DistInfo, parallel: str, bf16: bool, *, find_unused: bool = False) -> nn.Module:
    """DDP or FSDP2 (in place) around ``model``; a no-op on one device. Compile the result, not the
    inner model: ``torch.compile(wrap_model(...))`` lets DDP's bucketing and FSDP's hooks be traced.

    ``find_unused``: some trainable parameter may get no gradient in a micro-batch (see
    ``Trainer.unused_parameters_possible``); off otherwise, as it costs a graph walk every step."""
    if not info.enabled:
        return model
    if parallel == "fsdp":
        return shard_model(model, bf16)
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def mixed_precision_policy(bf16: bool):
    """bf16 parameters and fp32 gradient reduction; inputs are not cast, so the timesteps reach the
    timestep embedding in fp32 (autocast casts the matmul inputs)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if not bf16:
        return MixedPrecisionPolicy(cast_forward_inputs=False)
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)


def shard_model(model: nn.Module, bf16: bool) -> nn.Module:
    """FSDP2 ``fully_shard`` per transformer block, then the rest of the model."""
    from torch.distributed.fsdp import fully_shard

    policy = mixed_precision_policy(bf16)
    for block in getattr(model, "blocks", []):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind ``torch.compile`` (``._orig_mod``) and DDP/DataParallel (``.module``).
    An FSDP2 module is its own plain module (``fully_shard`` works in place)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool):
    """Run a micro-batch's forward and backward with or without the gradient reduction: skipped on
    all but the last micro-batch of an accumulated step (DDP ``no_sync``, FSDP2
    ``set_requires_gradient_sync``)."""
    base = getattr(model, "_orig_mod", model)  # behind torch.compile: the DDP or FSDP module
    if enabled:
        yield
    elif isinstance(base, nn.parallel.DistributedDataParallel):
        with base.no_sync():
            yield
    elif hasattr(base, "set_requires_gradient_sync"):
        base.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            base.set_requires_gradient_sync(True)
    else:
        yield


# --- gradients ----------------------------------------------------------------------------------
def is_sharded(x) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def local(x: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise)."""
    return x.to_local() if is_sharded(x) else x


def all_reduce_mean_grads(params, world: int) -> None:
    """Average the plain (not DDP/FSDP-managed) gradients over ranks in one flat bucket."""
    grads = [p.grad for p in params if p.grad is not None and not is_sharded(p.grad)]
    if world <= 1 or not grads:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    flat = all_reduce_sum(_flatten_dense_tensors(grads)) / world
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


@torch.no_grad()
def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over a mix of sharded (DTensor) and plain gradients, as a device tensor.

    Squared norms of the local shards are summed over ranks (one all-reduce), plain gradients are
    already identical on every rank; the total scales both groups alike. No host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    sharded = [g.to_local() for g in grads if is_sharded(g)]
    plain = [g for g in grads if not is_sharded(g)]
    device = (plain or sharded)[0].device
    squared = torch.zeros((), device=device, dtype=torch.float32)
    if sharded:
        shard_sq = _squared_norm(sharded, device)
        mesh = next(g for g in grads if is_sharded(g)).device_mesh
        dist.all_reduce(shard_sq, op=dist.ReduceOp.SUM, group=mesh.get_group())
        squared = squared + shard_sq
    if plain:
        squared = squared + _squared_norm(plain, device)
    total = squared.sqrt()
    if max_norm > 0 and max_norm != float("inf"):
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(sharded + plain, coef)
    return total


def _squared_norm(tensors: list[torch.Tensor], device) -> torch.Tensor:
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return torch.zeros((), device=device, dtype=torch.float32)
    norms = torch._foreach_norm(tensors, 2)
    return torch.stack([n.float() for n in norms]).pow(2).sum()


# --- state --------------------------------------------------------------------------------------
def full_state_dict(module: nn.Module, keep: bool = True) -> dict[str, torch.Tensor] | None:
    """The full parameter/buffer dict as CPU tensors, gathering sharded ones one at a time.

    Collective under FSDP: every rank calls; ``keep=False`` ranks drop each gathered tensor at once
    (only rank 0 writes checkpoints), so no rank holds a second full copy of the model."""
    out = {}
    for name, value in unwrap(module).state_dict().items():
        full = value.full_tensor() if is_sharded(value) else value
        if keep:
            out[name] = full.detach().cpu()
    return out if keep else None
