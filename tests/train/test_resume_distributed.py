"""Exactness of the loop: a SIGKILLed run resumed from its checkpoint reaches the same weights as an
uninterrupted run (bit for bit), and 2 torchrun processes (gloo) match 1 process with the same
global batch. Both launch real ``mupd train`` subprocesses on real PCam patches."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mupd.checkpoint import load_tensors
from mupd.train.metrics_log import read_metrics

from .conftest import PYTHON, free_port, subprocess_env


def _train(path, *extra, timeout=120):
    return subprocess.run([PYTHON, "-m", "mupd", "train", str(path), *extra], env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def _train_in_process(cfg):
    """The same run in this process, with the subprocesses' thread count (bitwise comparable)."""
    from mupd.train import train

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        return train(cfg, resume=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _weights(run_dir):
    ckpt = run_dir / "checkpoint"
    out = {f"model.{k}": v for k, v in load_tensors(ckpt / "model" / "model.safetensors").items()}
    out.update({f"ema.{k}": v for k, v in load_tensors(ckpt / "model" / "ema.safetensors").items()})
    out.update({f"opt.{k}": v for k, v in load_tensors(ckpt / "train_state" / "optimizer.safetensors").items()})
    return out


def test_sigkill_and_resume_is_bit_exact(run_config):
    overrides = dict(total_images=384, intervals={"log": 8, "checkpoint": 32, "preview": 0})
    ref_cfg, ref_path = run_config("uninterrupted", **overrides)
    cfg, path = run_config("killed", **overrides)
    state_file = Path(cfg.output) / "checkpoint" / "train_state" / "state.json"

    proc = subprocess.Popen([PYTHON, "-m", "mupd", "train", str(path)], env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while not state_file.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    seen = json.loads(state_file.read_text())["progress"]["images_seen"]
    assert 0 < seen < cfg.total_images, "the run finished before it could be killed; raise total_images"

    resumed = _train(path)  # automatic resume: the output folder holds a checkpoint
    assert resumed.returncode == 0, resumed.stderr[:3000] + "\n...\n" + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and f"at {seen} images" in resumed.stdout
    _train_in_process(ref_cfg)

    a, b = _weights(Path(ref_cfg.output)), _weights(Path(cfg.output))
    assert a.keys() == b.keys() and len(a) > 10
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"
    # the log of the resumed run is one consistent run: every logged image count once, in order
    images = [r["images"] for r in read_metrics(Path(cfg.output))]
    assert images == sorted(set(images)) and images[-1] == cfg.total_images
    state = json.loads((Path(cfg.output) / "checkpoint" / "train_state" / "state.json").read_text())
    assert state["progress"]["images_seen"] == cfg.total_images and state["progress"]["step"] == cfg.total_images // cfg.batch.global_size


def test_two_process_torchrun_matches_one_process(run_config):
    common = dict(total_images=48, intervals={"log": 8, "checkpoint": 0, "preview": 0}, batch={"global_size": 8, "per_device": 4})
    one_cfg, one_path = run_config("one", **common)  # 1 process: 2 accumulation steps of 4
    two_cfg, two_path = run_config("two", **common)  # 2 processes x 4, no accumulation
    _train_in_process(one_cfg)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "mupd", "train", str(two_path)]
    double = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert double.returncode == 0, double.stderr[:3000] + "\n...\n" + double.stderr[-3000:]
    a, b = _weights(Path(one_cfg.output)), _weights(Path(two_cfg.output))
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between 1 and 2 processes")
    log1, log2 = read_metrics(Path(one_cfg.output)), read_metrics(Path(two_cfg.output))
    assert [r["images"] for r in log1] == [r["images"] for r in log2]
    assert [r["loss"] for r in log1] == pytest.approx([r["loss"] for r in log2], rel=1e-4)
