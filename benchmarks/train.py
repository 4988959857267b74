"""Training throughput: ``mupd.train.Trainer.train_step`` vs the same step written naively.

    python benchmarks/train.py --out benchmarks/results/train_cpu.json            # CPU: tiny, S/2, B/2
    python benchmarks/train.py --out train_gpu.json --gpu                         # + S/2, B/2, XL/2 at 256 px

The naive peer is a plain PyTorch loop over the same MuPD model and text tokens: fp32, no compile,
no EMA, no condition dropout, no gradient clipping, ``torch.optim.AdamW`` defaults. The ratio
``trainer / naive`` (images/s) shows what the loop's extras cost on CPU, and what bf16 autocast and
``torch.compile`` buy on a GPU. Latents are random (speed does not depend on content). Memory:
CPU = the process's peak RSS so far (a high-water mark, so it only grows down the table); GPU =
``torch.cuda.max_memory_allocated`` per run. MFU (GPU) uses 6 x parameters x tokens FLOPs per
image for forward + backward (attention FLOPs excluded) against the device's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from mupd.encoders import registry
from mupd.train import TrainConfig
from mupd.train.data import TrainData
from mupd.train.loop import Trainer

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _data(n: int, latent: int, captions: list[str]) -> TrainData:
    g = torch.Generator().manual_seed(0)
    return TrainData(torch.randn(n, 4, latent, latent, generator=g), torch.zeros(n, dtype=torch.long), [captions[i % len(captions)] for i in range(n)])


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(step, device, seconds: float, warmup: int, min_steps: int = 3) -> tuple[int, float]:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, steps = time.perf_counter(), 0
    while steps < min_steps or time.perf_counter() - start < seconds:
        step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps, time.perf_counter() - start


def bench_trainer(preset: str, latent: int, batch: int, device: torch.device, *, precision: str, compile: bool, seconds: float, tmp: Path) -> dict:
    captions = ["lymph node, normal tissue", "lymph node, metastatic tumour"]
    cfg = TrainConfig.from_dict({
        "output": str(tmp / "bench"), "model": {"preset": preset}, "batch": {"global_size": batch, "per_device": batch},
        "total_images": 10**9, "precision": precision, "compile": compile, "progress": False, "ema": {"decay": 0.999},
        "conditions": {"text": {"name": "hashed-words", "kwargs": {"width": 64, "max_length": 16}}},
    })
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(cfg, data=_data(4 * batch, latent, captions), device=str(device), resume=False)
    steps, elapsed = _timed(trainer.train_step, device, seconds, warmup=3 if compile else 1)
    return {"images_per_s": steps * batch / elapsed, "steps": steps, "peak_memory_mb": _peak_mb(device),
            "parameters": trainer.model.num_parameters(), "tokens": trainer.model.config.num_patches}


def bench_naive(preset: str, latent: int, batch: int, device: torch.device, *, seconds: float) -> dict:
    from mupd.models.mupd import MuPD

    text = registry.build("text", "hashed-words", width=64, max_length=16)
    tokens, mask = text.encode(["lymph node, normal tissue", "lymph node, metastatic tumour"] * (batch // 2))
    tokens, mask = tokens.to(device), mask.to(device)
    model = MuPD.from_preset(preset, input_size=latent, modalities=("text",), cond_dims={"text": 64}).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch, 4, latent, latent, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        t = torch.rand(batch, device=device)
        noise = torch.randn_like(x0)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        loss = torch.nn.functional.mse_loss(model(x_t, t, {"text": (tokens, mask)}), noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    steps, elapsed = _timed(step, device, seconds, warmup=1)
    return {"images_per_s": steps * batch / elapsed, "steps": steps, "peak_memory_mb": _peak_mb(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per configuration")
    parser.add_argument("--gpu", action="store_true", help="also run S/2, B/2, XL/2 at 256 px on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the cores not already busy)")
    args = parser.parse_args()
    from mupd.train.demo import idle_threads

    torch.set_num_threads(args.threads or idle_threads())
    load = __import__("os").getloadavg()[0]
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="mupd-bench-"))
    rows = []
    cpu = torch.device("cpu")
    # CPU: tiny latents (8x8 = 64 px images through an 8x VAE), per-device batch as noted
    for preset, batch in (("tiny", 32), ("S/2", 8), ("B/2", 4)):
        naive = bench_naive(preset, 8, batch, cpu, seconds=args.seconds)
        ours = bench_trainer(preset, 8, batch, cpu, precision="fp32", compile=False, seconds=args.seconds, tmp=tmp)
        rows.append({"device": "cpu", "preset": preset, "latent": [4, 8, 8], "batch": batch, "precision": "fp32", "compile": False,
                     "trainer": ours, "naive": naive, "ratio_trainer_vs_naive": ours["images_per_s"] / naive["images_per_s"]})
        print(json.dumps(rows[-1]), flush=True)
    if args.gpu and torch.cuda.is_available():
        gpu = torch.device("cuda")
        name = torch.cuda.get_device_name(gpu)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        for preset, batch in (("S/2", 64), ("B/2", 64), ("XL/2", 32)):
            naive = bench_naive(preset, 32, batch, gpu, seconds=args.seconds)
            for compile in (False, True):
                ours = bench_trainer(preset, 32, batch, gpu, precision="bf16", compile=compile, seconds=args.seconds, tmp=tmp)
                flops = 6 * ours["parameters"] * ours["tokens"] * ours["images_per_s"]
                rows.append({"device": name, "preset": preset, "latent": [4, 32, 32], "image_size": 256, "batch": batch, "precision": "bf16",
                             "compile": compile, "trainer": ours, "naive_fp32": naive, "ratio_trainer_vs_naive": ours["images_per_s"] / naive["images_per_s"],
                             "mfu": None if peak is None else flops / (peak * 1e12)})
                print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "mupd.train step vs naive PyTorch step",
        "hardware": {"cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "torch": torch.__version__,
        "load_average_at_start": load,
        "note": "CPU timings on a shared machine are noisy; compare the ratio, not absolute images/s",
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
