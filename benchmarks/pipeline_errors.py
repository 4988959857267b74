"""How fast the pipelines commands reject bad input, against the cost of loading the model first.

    python benchmarks/pipeline_errors.py --model DIR [--rna FILE:ROW] [--out benchmarks/results/pipeline_errors_cpu.json]

Each bad command line runs as its own ``mupd`` process (what a user waits for: interpreter start,
CLI, checks, the one-line error). The peer is the floor an error *after* loading would cost: a
process that imports mupd, loads the same folder with ``Pipeline.from_pretrained`` and exits. The
model folder should be a real one (e.g. a ``mupd demo`` checkpoint); its weights are never changed.
Reported: median wall seconds over ``--repeats`` runs per case, and load / error as a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("MUPD_SAMPLE_DATA", HERE.parent.parent / "shared" / "data"))


def timed(argv: list[str], repeats: int) -> tuple[float, str]:
    times, err = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        run = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        times.append(time.perf_counter() - start)
        err = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"
    return statistics.median(times), err


def cases(model: str, rna: str | None, tmp: Path) -> dict[str, list[str]]:
    patch = str(sorted((DATA / "pcam/valid/1").iterdir())[0])
    out = ["--out", str(tmp / "out")]
    found = {
        "vary: missing --image": ["vary", "--model", model, "--image", str(tmp / "missing.png"), *out],
        "generate: unknown label": ["generate", "--model", model, "--label", "no-such-label", *out],
        "generate: guidance for an absent stream": ["generate", "--model", model, "--text", "x", "--guidance",
                                                    "cells=2", *out],
        "vary: strength too small for euler_maruyama": ["vary", "--model", model, "--image", patch, "--strength",
                                                        "0.02", "--sampler", "euler_maruyama", *out],
        "stain: readout with guidance (or a model without source channels)": [
            "stain", "--model", model, "--image", patch, "--guidance", "2", *out],
    }
    if rna:
        table = rna.rsplit(":", 1)[0]
        found["generate: RNA row not in the table"] = ["generate", "--model", model, "--rna", f"{table}:NO_SUCH_ROW", *out]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a pipeline folder (e.g. a mupd demo checkpoint)")
    parser.add_argument("--rna", default=None, help="an RNA spec FILE:ROW the model accepts (adds a bad-row case)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "pipeline_errors_cpu.json"))
    args = parser.parse_args()
    mupd = [sys.executable, "-m", "mupd"]
    with tempfile.TemporaryDirectory() as tmp:
        errors = {}
        for name, argv in cases(args.model, args.rna, Path(tmp)).items():
            seconds, message = timed(mupd + argv, args.repeats)
            errors[name] = {"seconds": round(seconds, 3), "message": message[:300]}
            print(f"{seconds:6.2f} s  {name}: {message[:120]}")
        load_code = ("from mupd.pipelines import Pipeline; "
                     f"Pipeline.from_pretrained({args.model!r}, device='cpu')")
        load, _ = timed([sys.executable, "-c", load_code], args.repeats)
    print(f"{load:6.2f} s  peer: start python, import mupd and load the model (no sampling)")
    slowest = max(e["seconds"] for e in errors.values())
    result = {
        "benchmark": "pipeline_errors",
        "model": str(Path(args.model).resolve()),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared; see load)",
        "load_average_at_end": os.getloadavg(),
        "repeats": args.repeats,
        "errors": errors,
        "peer_load_seconds": round(load, 3),
        "slowest_error_seconds": round(slowest, 3),
        "load_over_slowest_error": round(load / slowest, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
