"""Backbone speed: mupd's MuPD vs diffusers' DiTTransformer2DModel at the same size, one process.

    python benchmarks/backbone.py --out benchmarks/results/backbone_cpu.json --preset S/2 --input-size 16 --batch 4
    python benchmarks/backbone.py --out gpu.json --preset XL/2 --input-size 32 --batch 32 --device cuda [--compile]

Measures forward+backward time per iteration and sampling time per image (Euler, ``--steps`` network
evaluations) for: mupd with no conditions, diffusers DiT (class-conditional, its only mode), and
mupd with three modalities present (image 1 token, text 77 tokens, RNA 331 pathway scores). Runs
are interleaved (mupd, diffusers, mupd, ...) after warm-up and the median is reported; ratios are
mupd / diffusers (lower is better). On CUDA: bf16 autocast, optional ``torch.compile``.

Conditioning overhead (``--overhead-size``, default 32: 32x32 latents = 256 image tokens at patch 2):
the train step with the three streams (77 text + 1 image + 331 RNA condition tokens) over the same
model size with none, interleaved, as the median of per-repeat ratios; also the ratio of counted
FLOPs (``torch.utils.flop_counter``), which no other load on the machine can disturb.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

TEXT_TOKENS, TEXT_REAL, RNA_ENTRIES = 77, 40, 331  # CLIP-length text (40 real, the rest padding), 331 pathways


def build(args, device):
    from diffusers import DiTTransformer2DModel

    from mupd import MuPD
    from mupd.models.config import MuPDConfig

    cfg = MuPDConfig.from_preset(args.preset, input_size=args.input_size, modalities=())
    plain = MuPD(cfg)
    multi = MuPD.from_preset(
        args.preset, input_size=args.input_size, modalities=("image", "text"), vector_modalities={"rna": RNA_ENTRIES},
        cond_dims={"image": 1024, "text": 1024},
    )
    dit = DiTTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
        out_channels=cfg.out_channels, num_layers=cfg.depth, sample_size=cfg.input_size, patch_size=cfg.patch_size,
        num_embeds_ada_norm=1000, norm_eps=1e-6,
    )
    models = {"mupd": plain, "diffusers": dit, "mupd_3modalities": multi}
    for m in models.values():
        m.to(device)
    return models


def make_conditions(name, args, device):
    B = args.batch
    if name == "diffusers":
        return {"labels": torch.randint(0, 1000, (B,), device=device)}
    if name == "mupd":
        return {}
    text_mask = torch.arange(TEXT_TOKENS, device=device)[None].expand(B, TEXT_TOKENS) < TEXT_REAL
    return {
        "image": torch.randn(B, 1024, device=device),
        "text": (torch.randn(B, TEXT_TOKENS, 1024, device=device), text_mask),
        "rna": torch.randn(B, RNA_ENTRIES, device=device),
    }


def make_call(name, model, conditions):
    if name == "diffusers":
        return lambda x, t: model(x, timestep=1000 * t, class_labels=conditions["labels"]).sample
    return lambda x, t: model(x, t, conditions)


CLOCK = {"wall": time.perf_counter, "process": time.process_time}
_clock = time.perf_counter


def timer(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _clock()


def train_step(call, model, x, t):
    model.zero_grad(set_to_none=True)
    call(x, t).float().square().mean().backward()


@torch.no_grad()
def sample_loop(name, model, call, conditions, x, steps):
    """diffusers: a plain Euler loop; mupd: its own sampler (Euler), which encodes the conditions
    once and reuses each block's cross-attention keys/values across steps."""
    if name != "diffusers":
        from mupd.flow import sample

        return sample(model, x, conditions, method="euler", steps=steps)
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), 1.0 - i * dt, device=x.device)
        x = x - dt * call(x, t).float()
    return x


def measure(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = build(args, device)
    calls, conditions = {}, {}
    for name, model in models.items():
        model.train()
        conditions[name] = make_conditions(name, args, device)
        if args.compile:
            models[name] = model = torch.compile(model)
        calls[name] = make_call(name, model, conditions[name])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    x = torch.randn(args.batch, 4, args.input_size, args.input_size, device=device)
    t = torch.rand(args.batch, device=device)
    times = {("train", n): [] for n in models} | {("sample", n): [] for n in models}
    with autocast:
        for rep in range(args.warmup + args.repeats):
            for name, model in models.items():
                start = timer(device)
                train_step(calls[name], model, x, t)
                mid = timer(device)
                sample_loop(name, model, calls[name], conditions[name], x, args.steps)
                end = timer(device)
                if rep >= args.warmup:
                    times[("train", name)].append(mid - start)
                    times[("sample", name)].append((end - mid) / args.batch)
    med = {f"{kind}_{name}": statistics.median(v) for (kind, name), v in times.items()}
    return {
        "train_step_s": {n: med[f"train_{n}"] for n in models},
        "sample_s_per_image": {n: med[f"sample_{n}"] for n in models},
        "ratio_train_mupd_over_diffusers": med["train_mupd"] / med["train_diffusers"],
        "ratio_sample_mupd_over_diffusers": med["sample_mupd"] / med["sample_diffusers"],
        "ratio_train_3modalities_over_diffusers": med["train_mupd_3modalities"] / med["train_diffusers"],
        "ratio_sample_3modalities_over_diffusers": med["sample_mupd_3modalities"] / med["sample_diffusers"],
        "parameters": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
    }


def step_flops(call, model, x, t) -> int:
    """FLOPs of one train step (matmuls and attention, as torch's flop counter counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(call, model, x, t)
    return counter.get_total_flops()


def measure_overhead(args) -> dict:
    """Train step with 3 condition streams vs 0 (and vs diffusers' DiT) at ``--overhead-size``."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    sized = argparse.Namespace(**{**vars(args), "input_size": args.overhead_size})
    models = build(sized, device)
    calls = {}
    for name, model in models.items():
        model.train()
        calls[name] = make_call(name, torch.compile(model) if args.compile else model, make_conditions(name, sized, device))
    x = torch.randn(args.batch, 4, args.overhead_size, args.overhead_size, device=device)
    t = torch.rand(args.batch, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    times = {name: [] for name in models}
    loads = [os.getloadavg()[0]]
    with autocast:
        flops = {name: step_flops(calls[name], models[name], x, t) for name in models} if not args.compile else {}
        for rep in range(args.warmup + args.repeats):
            for name, model in models.items():
                start = timer(device)
                train_step(calls[name], model, x, t)
                if rep >= args.warmup:
                    times[name].append(timer(device) - start)
    loads.append(os.getloadavg()[0])
    ratios = [multi / plain for multi, plain in zip(times["mupd_3modalities"], times["mupd"])]
    out = {
        "input_size": args.overhead_size,
        "image_tokens": (args.overhead_size // models["mupd"].config.patch_size) ** 2,
        "condition_tokens": {"text": TEXT_TOKENS, "image": 1, "rna": RNA_ENTRIES},
        "train_step_s": {name: statistics.median(v) for name, v in times.items()},
        "ratio_train_3streams_over_0streams": statistics.median(ratios),
        "ratios_per_repeat": ratios,
        "ratio_train_3streams_over_diffusers": statistics.median(times["mupd_3modalities"]) / statistics.median(times["diffusers"]),
        "load_average_1min": {"before": loads[0], "after": loads[1]},
    }
    if flops:
        out["train_flops"] = flops
        out["flop_ratio_3streams_over_0streams"] = flops["mupd_3modalities"] / flops["mupd"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--preset", default="S/2")
    parser.add_argument("--input-size", type=int, default=16, help="latent side")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="network evaluations per sample")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks")
    parser.add_argument("--overhead-size", type=int, default=32, help="latent side for the conditioning-overhead run (0 = skip)")
    parser.add_argument(
        "--clock", choices=sorted(CLOCK), default="wall",
        help="'process' = this process's CPU time (robust when other jobs share the cores; CPU only)",
    )
    args = parser.parse_args(argv)
    global _clock
    if args.clock == "process" and args.device.startswith("cuda"):
        parser.error("--clock process measures CPU time; use wall on CUDA")
    _clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    if args.overhead_size:
        result["conditioning_overhead"] = measure_overhead(args)
    if args.device.startswith("cuda"):
        device_name = torch.cuda.get_device_name()
    else:
        device_name = f"{os.cpu_count()}-core CPU ({platform.machine()}), {torch.get_num_threads()} torch thread(s), clock={args.clock}"
    payload = {
        "benchmark": "backbone",
        "settings": vars(args) | {"precision": "bf16 autocast" if args.device.startswith("cuda") else "fp32"},
        "hardware": device_name,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        **result,
        "note": "ratios are mupd / diffusers (lower is better); diffusers' DiT has no condition streams, so the "
        "3-modality ratio is mupd's overhead for image+text+RNA conditioning relative to the unconditional DiT; "
        "conditioning_overhead: 3 streams over 0 at the same size (median of interleaved per-repeat ratios)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    summary = {k: v for k, v in payload.items() if k.startswith("ratio")}
    if "conditioning_overhead" in payload:
        summary["conditioning_overhead"] = {k: v for k, v in payload["conditioning_overhead"].items() if "ratio" in k and "per_repeat" not in k}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
