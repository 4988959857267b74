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
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistInfo(rank, world, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(obj, src: int = 0):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def wrap_model(model: torch.nn.Module, info: DistInfo, parallel: str, bf16: bool) -> torch.nn.Module:
    """DDP or FSDP2 wrapper (a no-op on one device). Returns the module to call for training."""
    if not info.enabled:
        return model
    if parallel == "fsdp":
        return _fully_shard(model, bf16)
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    # static graph: condition streams can be skipped for a whole micro-batch
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def _fully_shard(model: torch.nn.Module, bf16: bool) -> torch.nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in getattr(model, "blocks", []):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def full_state_dict(model: torch.nn.Module, parallel: str) -> dict[str, torch.Tensor]:
    """The full (unsharded) parameter/buffer dict on every rank, CPU tensors."""
    model = unwrap(model)
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
