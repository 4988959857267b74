"""FID/KID speed against torchmetrics on the same features, in the same process (CPU).

mupd computes ``Tr sqrt(S_r S_f)`` as the nuclear norm of an n x m matrix (exact); torchmetrics takes
the eigenvalues of the D x D product. Both run on identical random 2048-d feature sets; the JSON
records the values (they must agree), the seconds of each and the ratio torchmetrics / mupd.

    python benchmarks/metrics.py --out benchmarks/results/metrics_cpu.json [--sizes 500 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch


class _Identity(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def _timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return value, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/metrics_cpu.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bootstrap", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    from mupd.metrics.distribution import fid_kid, frechet_distance, kernel_distance

    rows = []
    for n in args.sizes:
        rng = np.random.default_rng(n)
        mix = rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)
        real = np.maximum(rng.normal(size=(n, args.dim)) @ mix, 0)  # ReLU-like, as pool features are
        fake = np.maximum((rng.normal(size=(n, args.dim)) * 1.1 + 0.05) @ mix, 0)

        def tm_fid():
            m = FrechetInceptionDistance(feature=_Identity(args.dim))
            m.set_dtype(torch.float64)
            m.update(torch.tensor(real), real=True)
            m.update(torch.tensor(fake), real=False)
            return float(m.compute())

        def tm_kid():
            m = KernelInceptionDistance(feature=_Identity(args.dim), subsets=10, subset_size=n)
            m.set_dtype(torch.float64)
            m.update(torch.tensor(real), real=True)
            m.update(torch.tensor(fake), real=False)
            return float(m.compute()[0])

        ours_fid, t_ours_fid = _timed(lambda: frechet_distance(real, fake))
        ref_fid, t_ref_fid = _timed(tm_fid)
        ours_kid, t_ours_kid = _timed(lambda: kernel_distance(real, fake, subsets=10, subset_size=n)[0])
        ref_kid, t_ref_kid = _timed(tm_kid)
        _, t_boot = _timed(lambda: fid_kid(real, fake, n_resamples=args.bootstrap))
        rows.append({
            "n_per_set": n, "dim": args.dim,
            "fid": {"mupd": ours_fid, "torchmetrics": ref_fid, "rel_diff": abs(ours_fid - ref_fid) / abs(ref_fid),
                    "seconds_mupd": t_ours_fid, "seconds_torchmetrics": t_ref_fid, "speedup": t_ref_fid / t_ours_fid},
            "kid": {"mupd": ours_kid, "torchmetrics": ref_kid, "seconds_mupd": t_ours_kid,
                    "seconds_torchmetrics": t_ref_kid, "speedup": t_ref_kid / t_ours_kid},
            f"seconds_fid_kid_with_{args.bootstrap}_bootstrap_resamples": t_boot,
        })
        print(json.dumps(rows[-1], indent=1))
    result = {"benchmark": "metrics: FID/KID vs torchmetrics", "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)",
              "torch": torch.__version__, "rows": rows}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
