"""Correctness on a GPU before any figure is trusted (about 3 minutes on one GPU).

    python benchmarks/gpu_check.py                    # CUDA; writes benchmarks/results/gpu_check_<device>.json
    python benchmarks/gpu_check.py --device cpu --compile-backend aot_eager   # the same checks on the CPU

1. bf16 autocast vs fp32: MuPD at S/2 width, 2 blocks (16x16 latents, 3 modalities, weights perturbed off their zero
   init so the output is not trivially 0) - relative L2 error of the velocity.
2. torch.compile vs eager (fp32, TF32 off): velocity and every gradient.
3. flash / memory-efficient SDPA vs the math kernel under bf16, with and without conditions, and
   which kernels ran (on CUDA the unconditioned model must have run flash).
4. DDP and FSDP2 (mupd's ``shard_model``, bf16 parameters on CUDA, its DTensor-aware clipping) on a
   1-rank process group in this process: 2 steps, first loss equal to the unwrapped model's.
5. ``torchrun -m mupd train`` for 2 optimizer steps with ``parallel: ddp`` and ``parallel: fsdp``,
   compiled on CUDA, on synthetic patches encoded by ``mupd data encode`` with a tiny random
   autoencoder: each must exit 0 and log finite losses. One process per GPU (at most 2); with one
   GPU, mupd trains unwrapped (no process group), which is why check 4 exists.
Every check records its error and the next one still runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpu_common import FAST_SDPA, build_mupd, device_info, make_conditions, perturb_, sdpa_kernels_ran, slug
from torch.nn.attention import SDPBackend, sdpa_kernel

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = {"bf16_vs_fp32": 3e-2, "compiled_vs_eager": 1e-3, "flash_vs_math": 3e-2}  # fp32 reordering gives ~1e-6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _model_and_inputs(device, with_modalities=True, latent=16, batch=4, quick=False):
    # two blocks: the same kernels as the full depth (S/2 width on a GPU), a fraction of the compile time
    overrides = dict(depth=2, hidden_size=64, num_heads=4) if quick else dict(depth=2)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the weights' initialisation
    model = build_mupd("S/2", latent, device, with_modalities, overrides)
    perturb_(model)
    x = torch.randn(batch, 4, latent, latent, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    conditions = make_conditions(batch, device, g) if with_modalities else None
    return model, x, t, conditions


def check_bf16(device, args) -> dict:
    model, x, t, conds = _model_and_inputs(device, quick=args.quick)
    with torch.no_grad():
        ref = model(x, t, conds).float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(x, t, conds).float()
    err = rel_err(low, ref)
    return {"ok": err < TOLERANCE["bf16_vs_fp32"], "relative_error": err, "tolerance": TOLERANCE["bf16_vs_fp32"]}


def check_compile(device, args) -> dict:
    model, x, t, conds = _model_and_inputs(device, quick=args.quick)

    def run(fn):
        model.zero_grad(set_to_none=True)
        out = fn(x, t, conds)
        out.float().square().mean().backward()
        return out.detach().float(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_out, eager_grads = run(model)
    compiled = torch.compile(model, backend=args.compile_backend, dynamic=False)
    start = time.perf_counter()
    comp_out, comp_grads = run(compiled)
    compile_s = time.perf_counter() - start
    errors = {"velocity": rel_err(comp_out, eager_out)}
    # per tensor, among gradients that matter (a near-zero gradient's relative error is only rounding)
    scale = max((float(g.norm()) for g in eager_grads.values()), default=0.0)
    worst = max(((rel_err(comp_grads[n], g), n) for n, g in eager_grads.items() if float(g.norm()) > 1e-3 * scale), default=(0.0, None))
    errors["worst_gradient"], errors["worst_gradient_name"] = worst
    ok = set(comp_grads) == set(eager_grads) and errors["velocity"] < TOLERANCE["compiled_vs_eager"] and worst[0] < TOLERANCE["compiled_vs_eager"]
    return {"ok": ok, **errors, "tolerance": TOLERANCE["compiled_vs_eager"], "backend": args.compile_backend, "first_call_s": compile_s}


def check_sdpa(device, args) -> dict:
    out = {"ok": True, "tolerance": TOLERANCE["flash_vs_math"]}
    for label, with_modalities in (("no_conditions", False), ("3_modalities", True)):
        model, x, t, conds = _model_and_inputs(device, with_modalities, quick=args.quick)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            with sdpa_kernel(SDPBackend.MATH):
                ref = model(x, t, conds).float()
            with sdpa_kernel(FAST_SDPA):
                fast = model(x, t, conds).float()
                kernels = sdpa_kernels_ran(lambda: model(x, t, conds))
        err = rel_err(fast, ref)
        # on CUDA the unmasked self-attention must take the flash kernel, or the benchmark is not what it says
        flash_ran = kernels.get("flash", 0) > 0 if device.type == "cuda" else True
        out[label] = {"relative_error": err, "kernels": kernels, "flash_ran": flash_ran}
        out["ok"] &= err < TOLERANCE["flash_vs_math"] and flash_ran and "math" not in kernels
    return out


def _one_rank_run(parallel: str, device, args) -> dict:
    """Two optimizer steps of the wrapped model with mupd's FSDP2 sharding / DDP and its DTensor-aware
    clipping; the first loss must equal the unwrapped model's (same noise and times)."""
    import copy

    from mupd.flow import flow_matching_loss
    from mupd.train import distributed as D

    model, x, t, conds = _model_and_inputs(device, quick=args.quick)
    reference = copy.deepcopy(model)
    bf16 = device.type == "cuda"
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device)

    def loss_of(m):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return flow_matching_loss(m, x, conds, noise=noise, t=t)

    with torch.no_grad():
        ref_loss = float(loss_of(reference))
    if parallel == "fsdp":
        wrapped = D.shard_model(model, bf16)
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if bf16 else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(2):
        loss = loss_of(wrapped)
        loss.backward()
        D.clip_grad_norm(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    err = abs(losses[0] - ref_loss) / abs(ref_loss)
    tol = TOLERANCE["bf16_vs_fp32"] if bf16 else 1e-5
    return {"ok": all(map(math.isfinite, losses)) and err < tol, "losses": losses, "unwrapped_loss": ref_loss,
            "relative_error": err, "tolerance": tol}


def check_one_rank(device, args) -> dict:
    """FSDP2 and DDP in this process on a 1-rank group (mupd's own group backend): the wrapping paths
    that ``mupd train`` skips when torchrun starts a single process."""
    import socket

    import torch.distributed as dist

    from mupd.train import distributed as D

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(D.process_group_backend(device), init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, **kwargs)
    try:
        out: dict = {"ok": True}
        for parallel in ("ddp", "fsdp"):
            out[parallel] = _one_rank_run(parallel, device, args)
            out["ok"] &= out[parallel]["ok"]
        return out
    finally:
        dist.destroy_process_group()


def _synthetic_shards(folder: Path, env: dict, timeout: int) -> Path:
    """32 px noise-textured patches in two class folders -> a tiny random autoencoder -> ``mupd data encode``."""
    import numpy as np
    from PIL import Image

    from mupd.encoders.vae import LatentAutoencoder

    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (folder / "patches" / label).mkdir(parents=True, exist_ok=True)
        for i in range(16):
            pixels = (rng.random((32, 32, 3)) * 128 + 64 * int(label)).astype("uint8")
            Image.fromarray(pixels).save(folder / "patches" / label / f"{i}.png")
    LatentAutoencoder.tiny(block_out_channels=(16, 32), norm_num_groups=8, seed=0).save_pretrained(folder / "vae")
    cmd = [sys.executable, "-m", "mupd", "data", "encode", str(folder / "patches"), "--vae", str(folder / "vae"),
           "--out", str(folder / "shards"), "--caption-template", "pcam", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"mupd data encode failed: {(done.stderr or done.stdout)[-1500:]}")
    return folder / "shards"


def check_torchrun(device, args) -> dict:
    import yaml

    env = dict(os.environ, PYTHONUNBUFFERED="1", MUPD_DEVICE=device.type)
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src)] + [p for p in [env.get("PYTHONPATH")] if p])
    # one process per GPU, at most 2; a single process trains unwrapped (mupd joins no process group)
    nproc = max(1, min(2, torch.cuda.device_count())) if device.type == "cuda" else 1
    out: dict = {"ok": True, "processes": nproc, "wrapped": nproc > 1}
    with tempfile.TemporaryDirectory(prefix="mupd-gpu-check-") as tmp:
        tmp = Path(tmp)
        shards = _synthetic_shards(tmp, env, args.step_timeout)
        for parallel in ("ddp", "fsdp"):
            config = {
                "preset": "tiny", "output": str(tmp / f"run-{parallel}"), "seed": 0, "progress": False,
                "data": {"source": "shards", "path": str(shards), "image_size": 32},
                "vae": {"path": str(tmp / "vae")},
                "conditions": {"text": {"name": "hashed-words", "kwargs": {"width": 32, "max_length": 8}}},
                "batch": {"global_size": 8, "per_device": 4}, "total_images": 16, "parallel": parallel,
                "compile": device.type == "cuda" and args.compile_backend == "inductor",
                "intervals": {"log": 8, "checkpoint": 16, "preview": 0},
            }
            (tmp / f"{parallel}.yaml").write_text(yaml.safe_dump(config))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   "-m", "mupd", "train", str(tmp / f"{parallel}.yaml")]
            start = time.perf_counter()
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.step_timeout)
                rc, tail = done.returncode, (done.stderr + done.stdout)[-1500:]
            except subprocess.TimeoutExpired:
                rc, tail = "timeout", f"no exit within {args.step_timeout}s"
            losses = _logged_losses(tmp / f"run-{parallel}")
            ok = rc == 0 and bool(losses) and all(math.isfinite(v) for v in losses)
            out[parallel] = {"ok": ok, "exit_code": rc, "seconds": time.perf_counter() - start, "losses": losses,
                             "compile": config["compile"], **({} if ok else {"output_tail": tail})}
            out["ok"] &= ok
    return out


def _logged_losses(run: Path) -> list[float]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(r["loss"]) for r in rows if "loss" in r]


CHECKS = {"bf16_vs_fp32": check_bf16, "compiled_vs_eager": check_compile, "flash_vs_math": check_sdpa,
          "one_rank_ddp_fsdp2": check_one_rank, "torchrun": check_torchrun}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--quick", action="store_true", help="tiny widths (a CPU smoke test of the checks themselves)")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    p.add_argument("--step-timeout", type=int, default=120, help="seconds for each subprocess")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":  # an explicit index (process-group binding, DDP device_ids); fp32 references, not TF32
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.set_float32_matmul_precision("highest")  # the API mupd's trainer uses (mixing in allow_tf32 can raise)
    info = device_info(device)
    out = args.out or RESULTS / f"gpu_check_{slug(info['name'])}.json"
    results: dict = {}

    def write() -> dict:  # after every check, so a run stopped by a time limit keeps what it did
        data = {"benchmark": "gpu_check", "device": info, "quick": args.quick, "ok": all(r["ok"] for r in results.values()),
                "versions": {"torch": torch.__version__, "cuda": torch.version.cuda}, "checks": results}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return data

    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        start = time.perf_counter()
        try:
            results[name] = CHECKS[name](device, args)
        except Exception as exc:  # noqa: BLE001  (record it; the next check still runs)
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1500]}
        results[name]["seconds"] = time.perf_counter() - start
        print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'} ({results[name]['seconds']:.1f}s)", file=sys.stderr, flush=True)
        data = write()
    print(json.dumps({"out": str(out), "ok": data["ok"], **{k: v["ok"] for k, v in results.items()}}))
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
