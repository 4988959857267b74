"""Training at scale on the CPU: streamed shards vs in-memory data vs a naive loop, flat memory as the
data grows 100-fold, exact resume and a 2-process gloo run (issue 12, item 7).

    python benchmarks/train.py --out benchmarks/results/train_cpu.json      # ~5 min, < 1.3 GB of temp disk
    python benchmarks/train.py --out /tmp/t.json --quick                    # ~1 min smoke run (10x only)

1. Throughput (one process, same latents, interleaved rounds): ``Trainer.train_step`` fed by
   ``ShardStream`` (shards on disk, 0 and 1 DataLoader workers) vs fed by ``TrainData`` (tensors in
   memory) vs a naive PyTorch loop over the same model (fp32, no EMA/dropout/clipping, latents in
   memory). Ratios are medians over rounds.
2. Memory: synthetic latents (4x8x8 float32, 1 KiB each, as for 64 px patches through an 8x VAE)
   written as shards at 10x and 100x the sample data's size (PCam sample: 12,000 patches). Each size
   gets a ``mupd train`` subprocess and a data-only subprocess that streams one whole epoch; the
   parent samples their RSS every 0.1 s. The old in-memory path (``read_all``) runs at 10x, and at
   100x under an address-space limit (RLIMIT_AS) that the streamed run fits in: "larger than memory
   allows" made literal. Stated bound: the streamed runs' steady RSS (median over the second half of
   the run) at 100x exceeds 10x by < 64 MiB.
3. Resume: the 100x run to T/2, then resumed to T, equals the uninterrupted run to T bit for bit.
4. Two processes: ``torchrun --nproc-per-node 2`` (gloo) on the 100x set; loss log vs 1 process.
Timings on a shared machine are noisy: compare ratios and note the load average recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SAMPLE_DATA_PATCHES = 12_000  # PCam patches in the shared sample data (train 10,000 + valid 2,000)
LATENT = (4, 8, 8)
CAPTIONS = ["lymph node, normal tissue", "lymph node, metastatic tumour"]
TEXT = {"text": {"name": "hashed-words", "kwargs": {"width": 64, "max_length": 16}}}


def write_synthetic_shards(out: Path, n: int, shard_size: int = 2048, seed: int = 0) -> Path:
    """``n`` random latents as a shard folder (the format ``mupd data encode`` writes)."""
    from mupd.data.shards import ids_digest, shard_name, write_index, write_shard

    g = torch.Generator().manual_seed(seed)
    n_shards = -(-n // shard_size)
    for k in range(n_shards):
        size = min(shard_size, n - k * shard_size)
        ids = [f"s{k * shard_size + i}" for i in range(size)]
        labels = [(k * shard_size + i) % 2 for i in range(size)]
        tensors = {"latent": torch.randn((size, *LATENT), generator=g), "label": torch.tensor(labels)}
        write_shard(out, k, tensors, {"ids": ids, "labels": labels, "captions": [CAPTIONS[x] for x in labels],
                                      "planned": ids_digest(ids), "tensors": {"latent": list(LATENT), "label": []}})
        assert (out / f"{shard_name(k)}.json").exists()
    write_index(out, n_shards, {"note": "synthetic latents for benchmarks/train.py"})
    return out


# --- 1. throughput --------------------------------------------------------------------------------
def _config(out: Path, preset: str, batch: int, **extra) -> dict:
    return {"output": str(out), "model": {"preset": preset}, "batch": {"global_size": batch, "per_device": batch},
            "total_images": 10**9, "precision": "fp32", "progress": False, "ema": {"decay": 0.999}, "conditions": TEXT,
            "data": {"source": "shards", "path": "", "captions": {"0": CAPTIONS[0], "1": CAPTIONS[1]}, "augment": True}, **extra}


def _rate(step, seconds: float, batch: int) -> float:
    step()  # warm-up (first batch, caption cache)
    start, steps = time.perf_counter(), 0
    while steps < 3 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def naive_step(preset: str, latents: torch.Tensor, batch: int):
    from mupd.encoders import registry
    from mupd.models.mupd import MuPD

    text = registry.build("text", "hashed-words", width=64, max_length=16)
    tokens, mask = text.encode(CAPTIONS * (batch // 2))
    model = MuPD.from_preset(preset, input_size=LATENT[1], modalities=("text",), cond_dims={"text": 64}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cursor = [0]

    def step():
        x0 = latents[cursor[0]:cursor[0] + batch]
        cursor[0] = (cursor[0] + batch) % (len(latents) - batch)
        t = torch.rand(batch)
        noise = torch.randn_like(x0)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        loss = torch.nn.functional.mse_loss(model(x_t, t, {"text": (tokens, mask)}), noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_throughput(shards: Path, tmp: Path, preset: str, batch: int, seconds: float, rounds: int) -> dict:
    from mupd.data.shards import read_all
    from mupd.train import TrainConfig
    from mupd.train.data import TrainData
    from mupd.train.loop import Trainer
    from mupd.train.stream import ShardStream

    items = read_all(shards)
    latents, labels = items["latent"][:4096], items["labels"][:4096]
    in_memory = TrainData(latents, labels, [CAPTIONS[int(x)] for x in labels])
    cfg = TrainConfig.from_dict(_config(tmp / f"tp-{preset.replace('/', '')}", preset, batch))
    steps = {"streamed_workers0": Trainer(cfg, data=ShardStream(shards, workers=0, augment=False), device="cpu", resume=False).train_step,
             "streamed_workers1": Trainer(cfg, data=ShardStream(shards, workers=1, augment=False), device="cpu", resume=False).train_step,
             "in_memory": Trainer(cfg, data=in_memory, device="cpu", resume=False).train_step,
             "naive": naive_step(preset, latents, batch)}
    rates = {name: [] for name in steps}
    for _ in range(rounds):  # interleaved, so a burst of load from other processes hits every path
        for name, step in steps.items():
            rates[name].append(_rate(step, seconds, batch))
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {"preset": preset, "latent": list(LATENT), "batch": batch, "rounds": rounds, "images_per_s": med, "images_per_s_all": rates,
            "ratio_streamed_vs_in_memory": med["streamed_workers0"] / med["in_memory"],
            "ratio_streamed_workers1_vs_in_memory": med["streamed_workers1"] / med["in_memory"],
            "ratio_streamed_vs_naive": med["streamed_workers0"] / med["naive"],
            "ratio_in_memory_vs_naive": med["in_memory"] / med["naive"]}


# --- 2-4. subprocess runs with sampled RSS --------------------------------------------------------
def _tree(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmPeak) of a process in MiB; zeros once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmPeak"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return 0.0, 0.0


def run_sampled(cmd: list[str], *, address_limit_mb: int | None = None, timeout: float = 900, ranks: bool = False) -> dict:
    """Run ``cmd``; sample the RSS of the process (``ranks``: of each child of a launcher) every 0.1 s."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MUPD_DEVICE="cpu", PYTHONUNBUFFERED="1")

    def limit():
        if address_limit_mb:
            resource.setrlimit(resource.RLIMIT_AS, (address_limit_mb * 2**20, address_limit_mb * 2**20))

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=limit)
    series: dict[int, list[tuple[float, float]]] = {}
    vm_peak = 0.0
    while proc.poll() is None and time.perf_counter() - start < timeout:
        pids = [p for p in _tree(proc.pid) if p != proc.pid] if ranks else [proc.pid]
        for p in pids:
            rss, peak = _memory_mb(p)
            if rss:
                series.setdefault(p, []).append((time.perf_counter() - start, rss))
                vm_peak = max(vm_peak, peak)
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    output = proc.communicate()[0]
    peaks = sorted((max(r for _, r in s), pid) for pid, s in series.items() if len(s) > 2)[-2 if ranks else -1:]
    main = series.get(peaks[-1][1], []) if peaks else []
    half = main[len(main) // 2:] if main else []
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": [round(p, 1) for p, _ in peaks],
            "vm_peak_mb": round(vm_peak, 1),
            "rss_mb_second_half": [round(min(r for _, r in half), 1), round(max(r for _, r in half), 1)] if half else None,
            "steady_rss_mb": round(statistics.median(r for _, r in half), 1) if half else None,
            "rss_mb_series": [round(r, 1) for _, r in main[:: max(1, len(main) // 20)]], "output_tail": output[-600:]}


STREAM_EPOCH = """
import sys, time, torch
from mupd.train.stream import ShardStream
s = ShardStream(sys.argv[1], augment=True)
G = 8192
it = s.batches(seed=0, start=0, global_size=G)
t = time.perf_counter()
for _ in range(-(-len(s) // G)):
    b = next(it)
print({"images_per_s": len(s) / (time.perf_counter() - t), "shards_read": len(s.reader.shards_touched), "requests": s.reader.requests})
"""

IN_MEMORY_TRAIN = """
import sys, torch
from mupd.data.shards import read_all
from mupd.train import TrainConfig, train
from mupd.train.data import TrainData
torch.set_num_threads(1)
cfg = TrainConfig.from_yaml(sys.argv[1], [f"output={sys.argv[2]}"])
items = read_all(cfg.data.path)  # what 'mupd train' did before streaming: every sample in memory
data = TrainData(items.pop("latent"), items.pop("labels").long(), [str(c) for c in items.pop("captions")])
print({"images_per_s": train(cfg, data=data, resume=False, device="cpu")["images_per_s"]})
"""


def train_cmd(cfg_path: Path, *sets: str, launcher: list[str] | None = None) -> list[str]:
    base = launcher or [sys.executable]
    return [*base, "-m", "mupd", "train", str(cfg_path), "--threads", "1", *[x for s in sets for x in ("--set", s)]]


def write_train_config(path: Path, out: Path, shards: Path, total: int, batch: int = 64, per_device: int = 64) -> Path:
    cfg = _config(out, "tiny", batch, total_images=total, deterministic=True, seed=1,
                  intervals={"log": batch * 5, "checkpoint": 0, "preview": 0})
    cfg["batch"]["per_device"] = per_device
    cfg["data"]["path"] = str(shards)
    cfg["tensorboard"] = False
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def weights(run: Path) -> dict:
    from mupd.checkpoint import load_tensors

    ck = run / "checkpoint"
    out = {f"model.{k}": v for k, v in load_tensors(ck / "model" / "model.safetensors").items()}
    out.update({f"opt.{k}": v for k, v in load_tensors(ck / "train_state" / "optimizer.safetensors").items()})
    return out


def bench_scale(tmp: Path, factors: list[int], total: int) -> dict:
    rows, base_peak = {}, None
    for factor in factors:
        n = factor * SAMPLE_DATA_PATCHES
        shards = write_synthetic_shards(tmp / f"x{factor}", n)
        disk = sum(f.stat().st_size for f in shards.iterdir()) / 2**20
        cfg = write_train_config(tmp / f"x{factor}.yaml", tmp / f"run-x{factor}", shards, total)
        train = run_sampled(train_cmd(cfg))
        epoch = run_sampled([sys.executable, "-c", STREAM_EPOCH, str(shards)])
        row = {"samples": n, "disk_mb": round(disk, 1), "streamed_train": train, "streamed_epoch": epoch}
        in_memory = [sys.executable, "-c", IN_MEMORY_TRAIN, str(cfg), str(tmp / f"run-x{factor}-memory")]
        if factor == factors[0]:
            row["in_memory_train"] = run_sampled(in_memory)
            base_peak = (max(train["peak_rss_mb"] or [0]), train["steady_rss_mb"], epoch["steady_rss_mb"])
        else:  # the old path cannot even hold it in the address space the streamed run fits in
            limit = int(train["vm_peak_mb"] + 256)
            row["address_limit_mb"] = limit
            row["streamed_train_limited"] = run_sampled(train_cmd(cfg, f"output={tmp / f'run-x{factor}-limited'}"), address_limit_mb=limit)
            row["in_memory_train_limited"] = run_sampled(in_memory, address_limit_mb=limit)
            row["peak_rss_growth_vs_first_mb"] = round(max(train["peak_rss_mb"] or [0]) - base_peak[0], 1)
            row["steady_rss_growth_vs_first_mb"] = round(train["steady_rss_mb"] - base_peak[1], 1)
            row["epoch_steady_rss_growth_vs_first_mb"] = round(epoch["steady_rss_mb"] - base_peak[2], 1)
            row = {**row, **bench_resume_and_ranks(tmp, factor, shards, total)}
        rows[f"x{factor}"] = row
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)
        if factor != factors[-1]:
            shutil.rmtree(shards)
    return rows


def bench_resume_and_ranks(tmp: Path, factor: int, shards: Path, total: int) -> dict:
    full = tmp / f"run-x{factor}"  # the uninterrupted run from bench_scale
    cfg = tmp / f"x{factor}.yaml"
    half = run_sampled(train_cmd(cfg, f"output={tmp / 'resumed'}", f"total_images={total // 2}"))
    rest = run_sampled(train_cmd(cfg, f"output={tmp / 'resumed'}"))
    a, b = weights(full), weights(tmp / "resumed")
    resume = {"returncodes": [half["returncode"], rest["returncode"]], "bit_exact": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
              "resumed_at_images": total // 2}
    two_cfg = write_train_config(tmp / "two.yaml", tmp / "two", shards, total, per_device=32)
    one_cfg = write_train_config(tmp / "one.yaml", tmp / "one", shards, total, per_device=32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    two = run_sampled(train_cmd(two_cfg, launcher=launcher), ranks=True)
    one = run_sampled(train_cmd(one_cfg))
    from mupd.train.metrics_log import read_metrics

    log1, log2 = read_metrics(tmp / "one"), read_metrics(tmp / "two")
    w1, w2 = weights(tmp / "one"), weights(tmp / "two")
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1 if k.startswith("model."))
    return {"resume": resume, "two_process_gloo": {
        **two, "images_per_s_logged": log2[-1].get("images_per_s") if log2 else None,
        "one_process_images_per_s_logged": log1[-1].get("images_per_s") if log1 else None,
        "one_process_peak_rss_mb": one["peak_rss_mb"], "max_abs_weight_diff_vs_one_process": diff,
        "losses_two": [round(r["loss"], 6) for r in log2], "losses_one": [round(r["loss"], 6) for r in log1]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1x and 10x, short timings")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="mupd-train-bench-"))
    try:
        factors = [1, 10] if args.quick else [10, 100]
        total = 1280 if args.quick else 6400
        shards = write_synthetic_shards(tmp / "throughput", 8192, shard_size=1024)
        throughput = [bench_throughput(shards, tmp, "tiny", 32, args.seconds / (3 if args.quick else 1), 1 if args.quick else args.rounds)]
        if not args.quick:
            throughput.append(bench_throughput(shards, tmp, "S/2", 8, args.seconds, 1))
        for row in throughput:
            print(json.dumps({k: v for k, v in row.items() if k != "images_per_s_all"}), flush=True)
        scale = bench_scale(tmp, factors, total)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"benchmark": "mupd train on the CPU: streamed shards vs in memory vs naive; RSS as data grows; resume; 2 processes",
              "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads_per_process": 1},
              "torch": torch.__version__, "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "sample_data_patches": SAMPLE_DATA_PATCHES, "latent": list(LATENT), "bytes_per_latent": 4 * LATENT[0] * LATENT[1] * LATENT[2],
              "bound": "streamed steady RSS (median of a run's second half) at the largest size exceeds the smallest by < 64 MiB",
              "note": "timings contended (see load averages): compare ratios within one run", "throughput": throughput, "scale": scale}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
