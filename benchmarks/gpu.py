"""GPU benchmark: mupd vs diffusers' DiT training throughput and MFU, and mupd's guided sampling time.

    python benchmarks/gpu.py                       # one CUDA GPU, <= 5 min; writes benchmarks/results/gpu_<device>.json
    python benchmarks/gpu.py --quick               # the same code path on the CPU at tiny sizes (< 1 min)

Training (256 px = 32x32x4 SD-VAE latents, random): bf16 autocast, SDPA restricted to flash /
memory-efficient (math only as a last resort; the kernels that ran are recorded per case),
``torch.compile`` (regional by default: each transformer block), fused AdamW, gradient clipping,
mupd's ``flow_matching_loss`` for both networks. For S/2, B/2 and XL/2: mupd with no conditions,
diffusers' ``DiTTransformer2DModel`` of the same depth/width/heads/patch (class-conditional, its only
mode), and mupd with three modalities (image 1 token, text 77 masked tokens, RNA 331 pathway scores;
10 % condition dropout as in training). Images/s over timed steps after warm-up; MFU against the
device's dense bf16 peak. Sampling: 512 px (64x64 latents), 50 Heun steps, batch 16, mupd XL/2 with
per-modality guidance on all three modalities (4 branches in one batched forward) next to diffusers'
DiT-XL/2 with class CFG (2 branches), both through ``mupd.flow.sample``; no VAE decode. Every case
catches its own errors (recorded in the JSON) and the run stops starting cases at ``--budget-s``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from gpu_common import (FAST_SDPA, RNA_PATHWAYS, TEXT_TOKENS, GuidedDiT, PeakMemory, build_dit, build_mupd,
                        compile_model, count_flops, device_info, dit_velocity, first_rows, formula_train_flops,
                        make_conditions, sdpa_kernels_ran, slug, sync, timed)
from torch.nn.attention import sdpa_kernel
from tqdm.auto import tqdm

SIZES = ("S/2", "B/2", "XL/2")
VARIANTS = ("mupd", "diffusers", "mupd_3modalities")
RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(train_latent=32, train_batch={"S/2": 256, "B/2": 128, "XL/2": 64}, warmup=3, max_steps=20, step_seconds=6.0,
            sample_preset="XL/2", sample_latent=64, sample_batch=16, sample_steps=50, sample_seconds=60.0, budget_s=250.0,
            overrides={})
# --quick: the same cases and code at tiny widths on 64 px (8x8 latents), 2 Heun steps
QUICK = dict(train_latent=8, train_batch={s: 2 for s in SIZES}, warmup=1, max_steps=2, step_seconds=0.0,
             sample_preset="XL/2", sample_latent=8, sample_batch=2, sample_steps=2, sample_seconds=60.0, budget_s=120.0,
             overrides={"S/2": dict(depth=1, hidden_size=32, num_heads=2), "B/2": dict(depth=1, hidden_size=48, num_heads=3),
                        "XL/2": dict(depth=2, hidden_size=64, num_heads=4)})
OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
GUIDANCE = 1.5  # per-modality scale (mupd) and CFG scale (diffusers); the cost does not depend on it


def log(start: float, message: str) -> None:
    tqdm.write(f"[{time.monotonic() - start:6.1f}s] {message}", file=sys.stderr)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _free(device: torch.device) -> None:
    torch._dynamo.reset()  # compiled graphs hold the previous model's shapes (and memory)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- training ------------------------------------------------------------------------------------
def _train_setup(size: str, variant: str, opts: dict, batch: int, device: torch.device):
    """The network, its ``model(x, t, conditions)`` call, latents, conditions and FLOP facts."""
    from mupd.flow import flow_matching_loss

    g = torch.Generator().manual_seed(0)
    latent = opts["train_latent"]
    mupd = build_mupd(size, latent, device, variant == "mupd_3modalities", opts["overrides"].get(size, {}))
    cfg = mupd.config
    tokens = (latent // cfg.patch_size) ** 2
    keys = [tokens]  # key count of each attention in a block: self-attention, then one per condition stream
    conditions = None
    if variant == "diffusers":
        model = build_dit(cfg, device)
        del mupd
        forward = dit_velocity(model, torch.randint(0, 1000, (batch,), generator=g).to(device))
    else:
        model, forward = mupd, mupd
        if variant == "mupd_3modalities":
            conditions = make_conditions(batch, device, g)
            keys += [1, TEXT_TOKENS, RNA_PATHWAYS]
    x0 = torch.randn(batch, cfg.in_channels, latent, latent, generator=g).to(device)
    if hasattr(model, "check_inputs"):  # mupd validates once at the edge, as its trainer does
        model.check_inputs(x0, torch.rand(batch, device=device), conditions)
    model.train()
    # fp32 eager; 2 images minus 1 image = the per-image cost without batch-independent work
    per_batch = [count_flops(lambda n=n: flow_matching_loss(forward, x0[:n], first_rows(conditions, n)).backward()) for n in (1, 2)]
    flops = per_batch[1] - per_batch[0]
    model.zero_grad(set_to_none=True)
    params = sum(p.numel() for p in model.parameters())
    facts = {"parameters": params, "tokens_per_image": tokens, "flops_per_image_counted": flops,
             "flops_per_image_6PT_attn": formula_train_flops(params, tokens, cfg.depth, cfg.hidden_size, keys)}
    return model, forward, x0, conditions, facts


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, ValueError):  # fused needs a device/dtype torch supports it on
        return torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)


def train_case(size: str, variant: str, opts: dict, args, device: torch.device, batch: int) -> dict:
    from mupd.flow import drop_conditions, flow_matching_loss

    model, forward, x0, conditions, facts = _train_setup(size, variant, opts, batch, device)
    compile_model(model, args.compile, args.compile_backend)
    opt = _optimizer(model)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator(device=device).manual_seed(1)

    def step():
        conds = drop_conditions(conditions, 0.1, 0.1, generator=g) if conditions else None
        with autocast(device, args.precision):
            loss = flow_matching_loss(forward, x0, conds, generator=g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    with sdpa_kernel(FAST_SDPA), PeakMemory(device) as memory:
        first_s = timed(step, device)  # includes compilation
        warm_s = timed(step, device, max(1, opts["warmup"] - 1)) / max(1, opts["warmup"] - 1)
        steps = opts["max_steps"] if not opts["step_seconds"] else int(min(opts["max_steps"], max(3, opts["step_seconds"] / warm_s)))
        elapsed = timed(step, device, steps)
        kernels = sdpa_kernels_ran(step)
    images_per_s = steps * batch / elapsed
    peak = device_peak(args, device)
    result = {"images_per_s": images_per_s, "step_s": elapsed / steps, "steps_timed": steps, "batch": batch,
              "first_step_s_with_compile": first_s, "peak_memory_mb": memory.peak_mb, "memory_kind": memory.kind,
              "sdpa_kernels": kernels, **facts}
    for key, name in (("flops_per_image_counted", "mfu"), ("flops_per_image_6PT_attn", "mfu_6PT_attn")):
        result[name] = images_per_s * facts[key] / (peak * 1e12) if peak else None
    del model, opt
    return result


# ---- sampling ------------------------------------------------------------------------------------
def sample_case(kind: str, opts: dict, args, device: torch.device, remaining_s: float) -> dict:
    from mupd.flow import sample

    from mupd.models.config import MuPDConfig

    g = torch.Generator().manual_seed(2)
    B, latent, preset = opts["sample_batch"], opts["sample_latent"], opts["sample_preset"]
    overrides = opts["overrides"].get(preset, {})
    noise = torch.randn(B, 4, latent, latent, generator=g).to(device)
    if kind == "mupd_3modalities":  # per-modality guidance on all three: 4 branches in one batched forward
        model, conditions, rows = build_mupd(preset, latent, device, True, overrides).eval(), make_conditions(B, device, g), 4 * B
        guidance = {m: GUIDANCE for m in ("image", "text", "rna")}
    else:  # class CFG: 2 branches
        dit = build_dit(MuPDConfig.from_preset(preset, input_size=latent, modalities=(), **overrides), device).eval()
        model = GuidedDiT(dit, torch.randint(0, 1000, (B,), generator=g).to(device), GUIDANCE)
        conditions, guidance, rows = None, None, 2 * B

    def run(steps: int):
        with autocast(device, args.precision):
            return sample(model, noise, conditions, method="heun", steps=steps, guidance=guidance)

    steps = opts["sample_steps"]
    with sdpa_kernel(FAST_SDPA), PeakMemory(device) as memory:
        warm_s = timed(lambda: run(1), device)  # one Heun step = 2 network evaluations
        steps_run = steps if warm_s * steps <= remaining_s else max(1, int(remaining_s / max(warm_s, 1e-9)))
        elapsed = timed(lambda: run(steps_run), device)
        kernels = sdpa_kernels_ran(lambda: run(1))
    result = {"s_per_image": elapsed / B * steps / steps_run, "steps": steps, "steps_run": steps_run,
              "extrapolated": steps_run < steps, "batch": B, "rows_per_network_call": rows, "latent": latent,
              "network_evaluations": 2 * steps, "peak_memory_mb": memory.peak_mb, "memory_kind": memory.kind,
              "sdpa_kernels": kernels, "parameters": sum(p.numel() for p in model.parameters())}
    del model
    return result


# ---- driver --------------------------------------------------------------------------------------
def device_peak(args, device) -> float | None:
    return device_info(device, args.peak_tflops)["peak_bf16_tflops"] if device.type == "cuda" else None


def run_guarded(fn, device: torch.device, *, batch: int | None = None, retry_oom: bool = False) -> dict:
    """``fn(batch)``; any error becomes ``{"error": ...}`` (the run goes on), an out-of-memory error
    first retries once at half the batch (after the failed attempt's tensors are released)."""
    try:
        return fn(batch)
    except OOM as exc:
        error, oom = f"OutOfMemoryError: {str(exc).splitlines()[0]}", True
    except Exception as exc:  # noqa: BLE001  (a GPU session must not die half-way)
        error, oom = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500], False
    finally:
        _free(device)  # the exception (and the frames holding the model) is gone by now
    if oom and retry_oom and batch and batch >= 16:
        return run_guarded(fn, device, batch=batch // 2) | {"batch_reduced_after_oom_from": batch}
    return {"error": error}


def ratios(train: dict) -> dict:
    def ratio(a, b):
        x, y = train.get(a, {}).get("images_per_s"), train.get(b, {}).get("images_per_s")
        return x / y if x and y else None
    return {"mupd_over_diffusers": ratio("mupd", "diffusers"), "mupd_3modalities_over_diffusers": ratio("mupd_3modalities", "diffusers"),
            "mupd_3modalities_over_mupd": ratio("mupd_3modalities", "mupd")}


def payload(args, opts, device, results: dict, start: float) -> dict:
    import diffusers

    import mupd

    train_ratios = {size: ratios(cases) for size, cases in results["train"].items()}
    s = results["sample"]
    sample_ratio = None
    if s.get("mupd_3modalities", {}).get("s_per_image") and s.get("diffusers_cfg", {}).get("s_per_image"):
        sample_ratio = s["mupd_3modalities"]["s_per_image"] / s["diffusers_cfg"]["s_per_image"]
    return {
        "benchmark": "gpu", "quick": args.quick, "device": device_info(device, args.peak_tflops),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "mupd": mupd.__version__,
                     "cuda": torch.version.cuda, "python": sys.version.split()[0]},
        "settings": {"precision": args.precision, "compile": args.compile, "compile_backend": args.compile_backend,
                     "sdpa_enabled": [b.name for b in FAST_SDPA], "tf32": device.type == "cuda",
                     "optimizer": "AdamW (fused where supported), grad clip 1.0, no EMA",
                     **{k: v for k, v in opts.items() if k != "overrides"}, "model_overrides": opts["overrides"]},
        "flop_formulas": {
            "mfu": "images/s x flops_per_image_counted / peak; counted by torch.utils.flop_counter over one fp32 eager "
                   "forward+backward of one image (every matmul, incl. per-sample adaLN and condition projections, and attention)",
            "mfu_6PT_attn": "images/s x (6 x parameters x image tokens + 12 x depth x tokens x width x keys per block) / peak",
            "peak": "dense bf16 tensor-core TFLOP/s by device name (gpu_common.PEAK_BF16_TFLOPS); null = unknown device"},
        "train": results["train"], "train_ratios_images_per_s": train_ratios,
        "sample": s, "sample_ratio_s_per_image_mupd_3modalities_over_diffusers_cfg": sample_ratio,
        "errors": sorted(f"{where}: {r['error']}" for where, r in _all_cases(results) if "error" in r),
        "skipped": sorted(f"{where}: {r['skipped']}" for where, r in _all_cases(results) if "skipped" in r),
        "elapsed_s": time.monotonic() - start,
        "notes": ("diffusers' DiT has no condition streams: it is class-conditional through adaLN, embeds time and "
                  "class again in every block (its own table and MLP per block: 750M parameters at XL/2 vs mupd's 674M, "
                  "the same matmul FLOPs per image within ~2 %) and has a two-Linear adaLN output head; mupd_3modalities "
                  "adds one cross-attention stream per modality to every block (one-token streams skip attention). "
                  "Ratios are mupd / diffusers images/s (higher is better for mupd). "
                  "Sampling ratio compares 4 guided branches (mupd, 3 modalities) with 2 (diffusers class CFG)."
                  + (" QUICK RUN: tiny widths on the CPU, a smoke test of the code path, not a GPU figure." if args.quick else "")),
    }


def _all_cases(results: dict):
    for size, cases in results["train"].items():
        for variant, r in cases.items():
            yield f"train {size} {variant}", r
    for kind, r in results["sample"].items():
        yield f"sample {kind}", r


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)  # atomic: a killed run leaves the last complete file


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 sampling steps: a smoke test that runs on the CPU")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/gpu_<device>.json)")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu (--quick only)")
    p.add_argument("--compile", choices=("regional", "full", "none"), default=None,
                   help="torch.compile each block (default on CUDA), the whole model, or nothing (default with --quick)")
    p.add_argument("--compile-backend", default="inductor", help="e.g. aot_eager to test the compile path quickly on the CPU")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--sizes", default=",".join(SIZES), help="training sizes, comma-separated")
    p.add_argument("--no-sample", action="store_true", help="skip the sampling cases")
    p.add_argument("--budget-s", type=float, default=None, help="start no case after this many seconds")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for a device not in the table")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cpu") and not args.quick:
        p.error("no CUDA device: the full benchmark needs a GPU; use --quick for the CPU smoke test")
    args.compile = args.compile or ("none" if args.quick else "regional")
    args.precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = sorted(set(args.sizes) - set(SIZES))
    if unknown:
        p.error(f"--sizes: unknown {unknown}; choose from {', '.join(SIZES)}")
    return args


def make_plan(args) -> list[tuple[str, str | None, str]]:
    """Largest size first (its cases bound the cost of the smaller ones), sampling after it."""
    sizes = sorted(args.sizes, key=SIZES.index, reverse=True)
    train = [("train", size, variant) for size in sizes for variant in VARIANTS]
    sample = [] if args.no_sample else [("sample", None, "mupd_3modalities"), ("sample", None, "diffusers_cfg")]
    return train[: len(VARIANTS)] + sample + train[len(VARIANTS):]


def run_plan(plan, args, opts, device, out: Path, start: float) -> dict:
    budget = args.budget_s or opts["budget_s"]
    results: dict = {"train": {}, "sample": {}}
    longest_train = 0.0
    for kind, size, variant in tqdm(plan, desc="gpu benchmark", file=sys.stderr):
        case_start = time.monotonic()
        left = budget - (case_start - start)
        if left <= 0 or (kind == "train" and left < longest_train):
            result = {"skipped": f"{left:.0f}s left of the {budget:.0f}s budget; the longest training case took {longest_train:.0f}s"}
        elif kind == "train":
            batch = opts["train_batch"][size]
            result = run_guarded(lambda b: train_case(size, variant, opts, args, device, b), device,
                                 batch=batch, retry_oom=not args.quick)
            longest_train = max(longest_train, time.monotonic() - case_start)
        else:
            allotment = min(left, opts["sample_seconds"])
            result = run_guarded(lambda _: sample_case(variant, opts, args, device, allotment), device)
        where = results["train"].setdefault(size, {}) if kind == "train" else results["sample"]
        where[variant] = result
        summary = result.get("error") or result.get("skipped") or (
            f"{result['images_per_s']:.1f} images/s, mfu {result['mfu']}" if kind == "train" else f"{result['s_per_image']:.3f} s/image")
        log(start, f"{kind} {size or opts['sample_preset']} {variant}: {summary} ({time.monotonic() - case_start:.0f}s)")
        write(out, payload(args, opts, device, results, start))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    device = torch.device(args.device)
    opts = dict(QUICK if args.quick else FULL)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls, as mupd's trainer (settings.enable_tf32)
    for name in ("recompile_limit", "cache_size_limit"):  # one code object (a block) per size and variant
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    name = device_info(device)["name"]
    out = args.out or RESULTS / (f"gpu_quick_{slug(name)}.json" if args.quick else f"gpu_{slug(name)}.json")
    plan = make_plan(args)
    log(start, f"{name}: {len(plan)} cases, budget {args.budget_s or opts['budget_s']:.0f}s, compile={args.compile}, "
               f"precision={args.precision} -> {out}")
    results = run_plan(plan, args, opts, device, out, start)
    data = payload(args, opts, device, results, start)
    write(out, data)
    print(json.dumps({"out": str(out), "errors": data["errors"], "train_ratios": data["train_ratios_images_per_s"]}, indent=2))
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
