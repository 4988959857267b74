"""Load on ``mupd serve`` (localhost only): N concurrent clients for a bounded time and request count.

Each client loops: submit a generate job (text, n=1, few steps) through the HTTP API, poll it to the
end, fetch its PNG, and read the status line, until the time or the request budget is spent.
Reported: latency percentiles (submit, whole job, PNG, status), that every accepted job finished
(none lost; a refused submit while the queue is full is counted separately, not lost), the
server's throughput against the same jobs run on the pipeline directly in this process (the
peer: a ratio, the HTTP + queue overhead), and the process's resident memory sampled through the
run (bounded: finished jobs are dropped oldest first).

    python benchmarks/serve.py [--model DIR] [--clients 8] [--seconds 20] [--max-requests 400]

Without --model a tiny text-conditioned pipeline folder (random weights) is built in a temp dir:
the numbers then measure the server, not a model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np


def tiny_folder(root: Path) -> Path:
    import torch

    from mupd import MuPD
    from mupd.bundle import save_bundle
    from mupd.encoders.vae import LatentAutoencoder

    torch.manual_seed(0)
    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 32}, input_size=8)
    vae = LatentAutoencoder.tiny(in_channels=3, block_out_channels=(8, 8, 8), norm_num_groups=8, sample_size=32)
    return save_bundle(root / "tiny", model=model, vae=vae, encoders={"text": ("hashed-words", {"width": 32}, None)},
                       extra={"task": "generate", "image_size": 32})


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def call(url: str, data: dict | None = None, timeout: float = 60.0) -> tuple[int, bytes, float]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=timeout) as response:
            return response.status, response.read(), time.perf_counter() - start
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.perf_counter() - start


def client(base: str, steps: int, deadline: float, budget: dict, lock: threading.Lock, log: dict, k: int) -> None:
    while time.time() < deadline:
        with lock:
            if budget["left"] <= 0:
                return
            budget["left"] -= 1
        form = {"text": f"client {k} tumour tissue", "n": 1, "steps": steps, "seed": k, "sampler": "euler"}
        status, body, took = call(base + "/api/generate", form)
        if status != 200:
            log["refused" if status == 400 and b"queue is full" in body else "failed"].append(body[:200].decode())
            time.sleep(0.2)
            continue
        job_id, started = json.loads(body)["job"], time.perf_counter() - took
        log["submit"].append(took)
        log["accepted"].append(job_id)
        while True:
            _, body, _ = call(f"{base}/api/jobs/{job_id}")
            job = json.loads(body)
            if job.get("state") in ("done", "error"):
                break
            time.sleep(0.05)
        if job.get("state") != "done":
            log["failed"].append(job.get("error", "?"))
            continue
        log["job"].append(time.perf_counter() - started)
        status, png, took = call(base + job["images"][0]["url"])
        log["png"].append(took)
        log["completed"].append(job_id if status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n" else None)
        log["status"].append(call(base + "/api/status")[2])


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ms = np.asarray(values) * 1000
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)} | {"max": round(float(ms.max()), 2), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="pipeline folder (default: a tiny one built in a temp dir)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=400)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = parser.parse_args()

    import torch

    from mupd.app.server import create_app, serving
    from mupd.pipelines import Pipeline

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else tiny_folder(Path(tmp))
        pipe = Pipeline.from_pretrained(folder, device="cpu")
        pipe(text="warm up", n=1, steps=args.steps, sampler="euler", seed=0)
        direct = time.perf_counter()  # the peer: the same jobs on the pipeline, no HTTP, no queue
        for k in range(20):
            pipe(text=f"client {k} tumour tissue", n=1, steps=args.steps, sampler="euler", seed=k)
        direct_rate = 20 / (time.perf_counter() - direct)
        app = create_app(pipe)
        log = {key: [] for key in ("submit", "job", "png", "status", "accepted", "completed", "refused", "failed")}
        memory, lock, budget = [rss_mb()], threading.Lock(), {"left": args.max_requests}
        with serving(app) as base:
            assert base.startswith("http://127.0.0.1:")  # localhost only
            start = time.time()
            threads = [threading.Thread(target=client, args=(base, args.steps, start + args.seconds, budget, lock, log, k))
                       for k in range(args.clients)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                memory.append(rss_mb())
                time.sleep(0.25)
            elapsed = time.time() - start
        memory.append(rss_mb())
    completed = [c for c in log["completed"] if c]
    result = {
        "what": "mupd serve under N concurrent localhost clients (generate n=1 jobs through the HTTP API)",
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs; no GPU)",
        "model": "tiny text model, random weights (measures the server)" if not args.model else str(args.model),
        "clients": args.clients, "seconds_limit": args.seconds, "request_limit": args.max_requests,
        "steps": args.steps, "elapsed_s": round(elapsed, 2),
        "jobs_accepted": len(log["accepted"]), "jobs_completed": len(completed),
        "jobs_lost": len(log["accepted"]) - len(completed), "submits_refused_queue_full": len(log["refused"]),
        "errors": log["failed"][:5], "error_count": len(log["failed"]),
        "latency_ms": {k: percentiles(log[k]) for k in ("submit", "job", "png", "status")},
        "throughput_jobs_per_s": round(len(completed) / elapsed, 2),
        "direct_pipeline_jobs_per_s": round(direct_rate, 2),
        "served_over_direct_throughput": round(len(completed) / elapsed / direct_rate, 3),
        "note": ("clients, HTTP server and job worker share one Python process (threads, one GIL) on shared "
                 "cores, so the served/direct ratio also pays for the clients; rss_mb is that whole process"),
        "rss_mb": {"start": round(memory[0], 1), "peak": round(max(memory), 1), "end": round(memory[-1], 1)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
