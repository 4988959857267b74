"""CPU threads under load: training images/s with one core held busy vs idle, new default vs old.

    python benchmarks/threads.py --out benchmarks/results/threads_cpu.json [--seconds 2.5 --rounds 2]

One process per OpenMP wait policy (OpenMP reads its environment once, at load). In each, rounds of
idle / busy measurements alternate; ``busy`` starts a spinning subprocess (``while True: pass``)
before threads are picked, as a second job on a laptop or shared server would. Policies:

- ``old``: torch's default before this change: one intra-op thread per core, libgomp's default
  (active, spin-then-sleep) waiting;
- ``picked``: ``mupd.settings.default_threads()`` (cores this process may use minus busy ones);
- ``passive``: all cores with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spin-waiting);
- ``default``: what mupd now does: ``PASSIVE`` + picked threads.

Timed: ``mupd.train.Trainer.train_step`` (tiny preset, text condition, batch 32 of 8x8 latents, as in
``benchmarks/train.py``) and, as a peer, a diffusers ``DiTTransformer2DModel`` forward+backward at the
same size (``benchmarks/backbone.py``). Reported: images/s, and ``busy / idle`` per policy (1 = no
loss; the target is >= 0.5). On a shared machine "idle" means "not loaded by this benchmark"; the
busy cores seen at the start of each run are recorded.

``midrun`` (PASSIVE process): threads are picked on an idle machine, then a spinning job starts; the
trainer's images/s over the next seconds with the start's choice kept vs re-checked by
``mupd.settings.ThreadRetuner`` (what ``Trainer.fit`` does every 30 s; here every second).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WAIT_POLICIES = ("ACTIVE", "PASSIVE")  # libgomp's default spins (active) for a while before sleeping
POLICIES = {  # name -> (OMP_WAIT_POLICY, threads rule)
    "old": ("ACTIVE", "all"),
    "picked": ("ACTIVE", "picked"),
    "passive": ("PASSIVE", "all"),
    "default": ("PASSIVE", "picked"),
}
LOADS = ("idle", "busy")


def _models(batch: int, latent: int):
    """The real trainer step (tiny preset) and diffusers' DiT step of the same size."""
    import tempfile

    import torch
    from diffusers import DiTTransformer2DModel

    from mupd.models.config import MuPDConfig
    from mupd.train.config import TrainConfig
    from mupd.train.data import TrainData
    from mupd.train.loop import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="mupd-threads-"))
    cfg = TrainConfig.from_dict({
        "output": str(tmp / "bench"), "model": {"preset": "tiny"}, "batch": {"global_size": batch, "per_device": batch},
        "total_images": 10**9, "precision": "fp32", "progress": False, "ema": {"decay": 0.999},
        "conditions": {"text": {"name": "hashed-words", "kwargs": {"width": 64, "max_length": 16}}},
    })
    n, captions = 4 * batch, ["normal tissue", "metastatic tumour"]
    data = TrainData(torch.randn(n, 4, latent, latent, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 2,
                     [captions[i % 2] for i in range(n)], ids=[str(i) for i in range(n)], class_names=["0", "1"])
    trainer = Trainer(cfg, data=data, device="cpu", resume=False)
    mcfg = MuPDConfig.from_preset("tiny", input_size=latent, modalities=())
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=mcfg.num_heads, attention_head_dim=mcfg.head_dim,
                                in_channels=mcfg.in_channels, out_channels=mcfg.out_channels, num_layers=mcfg.depth,
                                sample_size=latent, patch_size=mcfg.patch_size, num_embeds_ada_norm=1000, norm_eps=1e-6)
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    x, labels = torch.randn(batch, mcfg.in_channels, latent, latent), torch.randint(0, 1000, (batch,))

    def dit_step():
        loss = dit(x, timestep=torch.randint(0, 1000, (batch,)), class_labels=labels).sample.float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"mupd": trainer.train_step, "diffusers_dit": dit_step}


def _rate(step, seconds: float, batch: int) -> float:
    step()  # warm-up
    start, steps = time.perf_counter(), 0
    while steps < 2 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def _worker(wait_policy: str, seconds: float, rounds: int) -> dict:
    """In one process (one OpenMP wait policy): rounds of {idle, busy} x {all cores, picked threads}."""
    import statistics

    import torch

    sys.path.insert(0, str(HERE))
    from mupd.settings import available_cores, busy_cores, default_threads

    batch, latent = 32, 8
    steps = _models(batch, latent)
    rows: dict = {}
    for _ in range(rounds):
        for load in LOADS:
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
            try:
                if spinner is not None:
                    time.sleep(0.5)  # let the scheduler place it
                for name, (policy, rule) in POLICIES.items():
                    if policy != wait_policy:
                        continue
                    seen = busy_cores()
                    threads = default_threads() if rule == "picked" else available_cores()
                    torch.set_num_threads(threads)
                    row = rows.setdefault(f"{name}/{load}", {"threads": [], "busy_cores_seen": [], "mupd": [], "diffusers_dit": []})
                    row["threads"].append(threads)
                    row["busy_cores_seen"].append(round(seen, 2))
                    for model, step in steps.items():
                        row[model].append(_rate(step, seconds, batch))
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
    out = {}
    for key, row in rows.items():
        out[key] = {"threads": row["threads"], "busy_cores_seen": row["busy_cores_seen"],
                    "mupd_images_per_s": statistics.median(row["mupd"]),
                    "diffusers_dit_images_per_s": statistics.median(row["diffusers_dit"]),
                    "all_mupd": [round(v, 1) for v in row["mupd"]], "all_dit": [round(v, 1) for v in row["diffusers_dit"]]}
    if wait_policy == "PASSIVE":
        out["midrun"] = _midrun(steps["mupd"], 4 * seconds, batch)
    return out


def _midrun(step, seconds: float, batch: int) -> dict:
    """A job starts after the threads were picked: keep the start's choice vs retune (every 1 s)."""
    import torch

    from mupd.settings import ThreadRetuner, apply_threads, settings

    out = {}
    for mode in ("kept", "retuned"):
        settings.threads = None
        apply_threads()  # automatic, on the idle machine
        start_threads = torch.get_num_threads()
        retune = ThreadRetuner(every=1.0, enabled=mode == "retuned")
        retune()
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            rate = _rate(lambda: (retune(), step()), seconds, batch)
        finally:
            spinner.kill()
            spinner.wait()
        out[mode] = {"threads_at_start": start_threads, "threads_at_end": torch.get_num_threads(), "mupd_images_per_s": rate}
    out["retuned_over_kept"] = out["retuned"]["mupd_images_per_s"] / out["kept"]["mupd_images_per_s"]
    return out


def _run(wait_policy: str, seconds: float, rounds: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MUPD_THREADS")}
    env["OMP_WAIT_POLICY"] = wait_policy
    out = subprocess.run([sys.executable, __file__, "--worker", wait_policy, "--seconds", str(seconds), "--rounds", str(rounds)],
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"worker {wait_policy} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "threads_cpu.json"))
    parser.add_argument("--seconds", type=float, default=2.5, help="timed seconds per model and measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating idle/busy rounds (medians reported)")
    parser.add_argument("--worker", choices=WAIT_POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.seconds, args.rounds)), flush=True)
        return 0
    started, load_start = time.time(), os.getloadavg()
    runs: dict = {}
    for wait_policy in WAIT_POLICIES:
        runs.update(_run(wait_policy, args.seconds, args.rounds))
        print(wait_policy, "done", flush=True)
    ratios = {"midrun_retuned_over_kept_mupd": runs["midrun"]["retuned_over_kept"]}
    for policy in POLICIES:
        idle, busy = runs[f"{policy}/idle"], runs[f"{policy}/busy"]
        for model in ("mupd", "diffusers_dit"):
            ratios[f"{policy}_{model}_busy_over_idle"] = busy[f"{model}_images_per_s"] / idle[f"{model}_images_per_s"]
        ratios[f"{policy}_busy_mupd_over_dit"] = busy["mupd_images_per_s"] / busy["diffusers_dit_images_per_s"]
        ratios[f"{policy}_over_old_busy_mupd"] = busy["mupd_images_per_s"] / runs["old/busy"]["mupd_images_per_s"]
        ratios[f"{policy}_over_old_idle_mupd"] = idle["mupd_images_per_s"] / runs["old/idle"]["mupd_images_per_s"]
    payload = {
        "benchmark": "threads: train-step images/s with one core busy vs idle",
        "hardware": f"{os.cpu_count()}-core CPU ({platform.machine()}, {platform.processor() or 'unknown'}), "
                    f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} usable",
        "load_average_start_end": [load_start, os.getloadavg()],
        "seconds": round(time.time() - started, 1),
        "settings": {"model": "mupd tiny preset, Trainer.train_step, batch 32, latents 4x8x8; peer diffusers DiT same size",
                     "timed_seconds_per_model": args.seconds, "rounds": args.rounds,
                     "policies": {k: {"OMP_WAIT_POLICY": w, "threads": r} for k, (w, r) in POLICIES.items()}},
        "ratios": ratios,
        "runs": runs,
        "note": "busy/idle: 1.0 = no loss, 0.5 = the 2x limit. 'idle' = not loaded by this benchmark; on a shared "
                "machine other jobs still run (see busy_cores_seen and the load average), so images/s are noisy",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(ratios, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
