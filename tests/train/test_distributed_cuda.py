"""The GPU check of the distributed step (skipped without CUDA): the same scenarios and probes as
``test_distributed_parity.py`` on CUDA, bf16 and ``torch.compile``: no host sync inside a step, every
all-reduce on a CUDA tensor (the ``cuda:nccl,cpu:gloo`` group), FSDP2 with the projector outside the
wrapper, no gradient sync before the last micro-batch, a sharded EMA, fp32 timesteps.

    python -m pytest tests/train/test_distributed_cuda.py -q     # one GPU: single-device part; two: NCCL
"""

from __future__ import annotations

import pytest
import torch

from .conftest import align_overrides
from .test_distributed_parity import _facts, _run_both, _worker

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = dict(total_images=64, intervals={"log": 8, "checkpoint": 0, "preview": 0}, batch={"global_size": 16, "per_device": 4},
           precision="bf16", deterministic=False)


def test_one_gpu_bf16_compiled_step_makes_no_host_sync(run_config, tmp_path, tiny_vit_dir):
    import json

    cfg, path = run_config("cuda", **GPU, compile=True, **align_overrides(tiny_vit_dir))
    spec = {"out": str(tmp_path / "facts"), "scenarios": [{"name": "cuda", "config": str(path), "device": "cuda"}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (facts,) = _worker().run(tmp_path / "spec.json")
    assert facts["device"] == "cuda" and facts["syncs"] == [], facts
    assert torch.backends.cuda.matmul.allow_tf32  # TF32 for the fp32 parts


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two GPUs (one process per GPU)")
def test_two_gpus_nccl_ddp_and_fsdp2(run_config, tmp_path, tiny_vit_dir):
    scenarios = {"ddp": {"parallel": "ddp", "compile": True, **align_overrides(tiny_vit_dir)},  # compile(DDP(model))
                 "fsdp": {"parallel": "fsdp", **align_overrides(tiny_vit_dir)}}
    specs = _run_both(run_config, tmp_path, scenarios, device="cuda", overrides=GPU)
    for name in scenarios:
        for f in _facts(specs[2], name):
            assert f["device"] == "cuda" and f["syncs"] == [] and set(f["all_reduce_devices"]) == {"cuda"}, f
            assert f["find_unused"] in (False, None), f
            if name == "fsdp":
                assert f["reduce_scatters"] == f["sharded_units"] and f["ema_local_numel"] < 0.6 * f["ema_full_numel"] and f["t_exact"], f
