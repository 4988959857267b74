"""Training scenarios for ``test_distributed_parity.py``: run under ``torchrun`` (N ranks, gloo) or
in the test process (1 rank, the reference). Each scenario trains a real ``Trainer`` to its
``total_images``; the second step runs under probes that record what a GPU run would pay for:
host syncs made by mupd's code (``.item()``, ``float()``, ``.cpu()``; AdamW's CPU step counters
are torch's and not a device sync), the devices of all-reduced tensors and FSDP
reduce-scatters (one per sharded unit per step means no gradient sync during accumulation).

    python -m torch.distributed.run --nproc-per-node 2 tests/train/distributed_worker.py spec.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


class Probe:
    """Counts host syncs and collectives while active (the data fetch is not counted: shards are
    read on the host by design)."""

    SYNCS = ("item", "__float__", "cpu")

    def __init__(self, trainer):
        self.trainer, self.active = trainer, False
        self.syncs: list[str] = []
        self.reduce_devices: list[str] = []
        self.reduce_scatters = 0
        self._saved: list[tuple[object, str, object]] = []

    def _patch(self, owner, name, make):
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def __enter__(self):
        def counting(name):
            def make(original):
                def wrapper(*args, **kwargs):
                    caller = sys._getframe(1).f_code.co_filename
                    if self.active and "mupd" in Path(caller).parts:  # mupd's own syncs, not torch internals
                        self.syncs.append(f"{name} in {Path(caller).name}:{sys._getframe(1).f_lineno}")
                    return original(*args, **kwargs)
                return wrapper
            return make

        for name in self.SYNCS:
            self._patch(torch.Tensor, name, counting(name))

        def all_reduce(original):
            def wrapper(tensor, *args, **kwargs):
                self.reduce_devices.append(str(tensor.device.type))
                return original(tensor, *args, **kwargs)
            return wrapper

        def reduce_scatter(original):
            def wrapper(*args, **kwargs):
                self.reduce_scatters += 1
                return original(*args, **kwargs)
            return wrapper

        self._patch(dist, "all_reduce", all_reduce)
        for name in ("reduce_scatter_single", "reduce_scatter_tensor"):
            if hasattr(dist, name):
                self._patch(dist, name, reduce_scatter)
        fetch = getattr(self.trainer, "_next_global_batch", None)
        if fetch is not None:
            def quiet_fetch():
                self.active = False
                try:
                    return fetch()
                finally:
                    self.active = True
            self.trainer._next_global_batch = quiet_fetch
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self.trainer.__dict__.pop("_next_global_batch", None)


def _local_numel(module) -> tuple[int, int]:
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in module.parameters())
    return local, sum(p.numel() for p in module.parameters())


def timestep_reaches_embedder_exactly(device: torch.device) -> bool:
    """FSDP2 with the bf16 policy: does the timestep embedding see the fp32 t unrounded?"""
    from mupd.models.mupd import MuPD
    from mupd.train import distributed as D

    torch.manual_seed(0)
    model = MuPD.from_preset("tiny", device=device, input_size=8, in_channels=4, modalities=(), cond_dims={})
    shard = getattr(D, "shard_model", None) or getattr(D, "_fully_shard")
    shard(model, True)
    seen = []
    model.t_embedder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    t = torch.tensor([0.123456789, 0.987654321], dtype=torch.float32, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        model(torch.randn(2, 4, 8, 8, device=device), t)
    expected = 1.0 - t if model.config.time_reversed else t
    return seen[0].dtype == torch.float32 and torch.equal(seen[0], expected)


def run_scenario(scenario: dict, out: Path) -> dict:
    from mupd.train import TrainConfig
    from mupd.train.loop import Trainer

    cfg = TrainConfig.from_yaml(scenario["config"])
    trainer = Trainer(cfg, device=scenario.get("device", "cpu"), resume=False)
    trainer.train_step()  # lazy initialisation (FSDP, caption cache) happens here, unprobed
    with Probe(trainer) as probe:
        trainer.train_step()
    facts = {"rank": trainer.dist.rank, "world": trainer.dist.world_size, "device": trainer.device.type,
             "accumulation": trainer.accum, "syncs": probe.syncs, "all_reduce_devices": probe.reduce_devices,
             "reduce_scatters": probe.reduce_scatters, "sharded_units": 1 + len(getattr(trainer.model, "blocks", []))}
    wrapper = getattr(trainer, "wrapped", getattr(trainer.train_model, "_orig_mod", trainer.train_model))
    facts["find_unused"] = getattr(wrapper, "find_unused_parameters", None)  # DDP only
    trainer.fit()
    facts["ema_local_numel"], facts["ema_full_numel"] = _local_numel(trainer.ema.module)
    if trainer.dist.enabled and cfg.parallel == "fsdp":
        facts["t_exact"] = timestep_reaches_embedder_exactly(trainer.device)
    (out / f"{scenario['name']}_rank{trainer.dist.rank}.json").write_text(json.dumps(facts))
    return facts


def run(spec_file: str | Path) -> list[dict]:
    spec = json.loads(Path(spec_file).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    try:
        return [run_scenario(s, out) for s in spec["scenarios"]]
    finally:
        from mupd.train.distributed import shutdown_distributed

        shutdown_distributed()


if __name__ == "__main__":
    run(sys.argv[1])
