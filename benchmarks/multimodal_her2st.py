"""Does RNA steer the image? The her2st recipe (``mupd.train.demo_her2st``) trained on sections
B4, C2, C3, C4 with several seeds; everything measured on the held-out section C5.

Per seed, one sample per C5 spot from that spot's RNA (guidance 2) and one unconditional sample
(same model, every condition dropped, same noise), then:

* FID/KID of each set to the real crops of the same spots (same extractor for both);
* an expression read-out (ridge fitted on *real* training crops, see ``report_her2st.Readout``)
  applied to the samples: Pearson between the read-out of a sample and the pathway scores of the
  RNA that conditioned it, vs the same against shuffled RNA. RNA steers only if matched > shuffled
  with intervals apart;
* nucleus statistics (``metrics.cells``): OT distance of nucleus features to the real crops.

Across seeds: mean with a t interval over seeds (n = seeds), and the read-out pooled over
seeds x spots with a spot bootstrap. Every run sees the same number of images.

    OMP_NUM_THREADS=1 python benchmarks/multimodal_her2st.py --out benchmarks/results/multimodal_her2st.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mupd.train import demo_her2st as D
from mupd.train import report_her2st as R


def seed_interval(values) -> dict:
    """Mean over seeds with a two-sided 95 % t interval (n = number of seeds)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "low": None, "high": None, "values": v.tolist(), "method": "one seed: no interval"}
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "values": v.tolist(), "method": f"t interval over {len(v)} seeds"}


def apart(a: dict, b: dict) -> bool:
    """True when interval ``a`` lies entirely above interval ``b``."""
    lo = a.get("low", a.get("value"))
    hi = b.get("high", b.get("value"))
    return lo is not None and hi is not None and lo > hi


def run_seed(data, vae, latents, readout, held, f_real, extractor, *, seed: int, images: int, steps: int, workdir: Path) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    trainer, result = D.fit_model(data, vae, latents, workdir / f"seed{seed}", seed=seed, total_images=images, progress=False)
    train_s = time.perf_counter() - t0
    true = data.pathway_scores[held][:, readout.targets]
    real_hwc = np.asarray(data.pixels[held].permute(0, 2, 3, 1))
    entry = {"seed": seed, "images_seen": result["images_seen"], "train_seconds": round(train_s, 1),
             "images_per_s": round(result["images_per_s"], 1)}
    arrays = {}
    for mode in ("rna", "none"):
        t1 = time.perf_counter()
        fake = R.generate(trainer, data, held, mode, steps=steps, seed=seed)
        pred = readout.predict(fake)
        arrays[mode] = pred
        entry[mode] = {"fid_kid": R.distribution(extractor, f_real, fake, seed=seed),
                       "readout": R.readout_agreement(pred, true, seed=seed),
                       "cells": R.cells(real_hwc, fake, seed=seed), "eval_seconds": round(time.perf_counter() - t1, 1)}
    return entry, arrays


def summarise(seeds: list[dict], pooled: dict, true: np.ndarray) -> dict:
    out = {}
    for mode in ("rna", "none"):
        out[mode] = {
            "fid": seed_interval([s[mode]["fid_kid"]["fid"]["value"] for s in seeds]),
            "kid": seed_interval([s[mode]["fid_kid"]["kid"]["value"] for s in seeds]),
            "readout_matched": seed_interval([s[mode]["readout"]["matched"]["value"] for s in seeds]),
            "readout_shuffled": seed_interval([s[mode]["readout"]["shuffled"]["value"] for s in seeds]),
            "nucleus_feature_wasserstein": seed_interval([s[mode]["cells"]["feature_wasserstein_emd"]["value"] for s in seeds]),
            "cell_type_total_variation": seed_interval([s[mode]["cells"]["cell_types"]["total_variation"] for s in seeds]),
            "readout_pooled_over_seeds": R.readout_agreement(np.concatenate(pooled[mode]), np.concatenate([true] * len(pooled[mode])), seed=1),
        }
    out["fid_rna_minus_none"] = seed_interval([s["rna"]["fid_kid"]["fid"]["value"] - s["none"]["fid_kid"]["fid"]["value"] for s in seeds])
    out["wasserstein_rna_minus_none"] = seed_interval([s["rna"]["cells"]["feature_wasserstein_emd"]["value"]
                                                       - s["none"]["cells"]["feature_wasserstein_emd"]["value"] for s in seeds])
    rna = out["rna"]
    out["verdict"] = {
        "rna_steers_readout": apart(rna["readout_matched"], rna["readout_shuffled"])
        and apart(rna["readout_pooled_over_seeds"]["matched"], rna["readout_pooled_over_seeds"]["shuffled"]),
        "rna_samples_closer_to_matched_real_fid": out["fid_rna_minus_none"]["high"] is not None and out["fid_rna_minus_none"]["high"] < 0,
        "rna_samples_closer_to_matched_real_cells": out["wasserstein_rna_minus_none"]["high"] is not None and out["wasserstein_rna_minus_none"]["high"] < 0,
        "rule": "a claim holds only when its 95 % intervals are apart (read-out: over seeds and pooled)",
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=8192, help="training images per run (equal for every seed)")
    parser.add_argument("--steps", type=int, default=10, help="Heun steps per sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-spots", type=int, default=None, help="spots per section (smoke runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    started = time.time()
    from mupd.metrics.features import build_extractor
    from mupd.train.data import encode_pixels

    data = D.load_data(max_spots=args.max_spots)
    vae, ae_info = D.autoencoder(data.pixels[data.train], seconds=60, seed=0, progress=False)
    latents = encode_pixels(vae, data.pixels, progress=False)
    readout = R.Readout(vae).fit(data, latents)
    held = np.where(~data.train)[0]
    extractor = build_extractor(R.FID_EXTRACTOR)
    f_real = extractor.extract(data.pixels[held])
    true = data.pathway_scores[held][:, readout.targets]
    report = {
        "benchmark": "multimodal_her2st",
        "hardware": f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs (load average at start "
                    f"{os.getloadavg()[0]:.1f}), {args.threads} torch thread(s)",
        "torch": torch.__version__,
        "recipe": {"train_sections": list(D.TRAIN_SECTIONS), "held_out_sections": list(D.HELD_OUT_SECTIONS),
                   "crop_px": D.CROP, "size_px": D.SIZE, "train_spots": int(data.train.sum()), "held_out_spots": int(len(held)),
                   "genes": len(data.vocabulary), "pathways": len(data.scorer), "model": D.DEMO_MODEL,
                   "images_per_run": args.images, "sampler": {"method": "heun", "steps": args.steps, "guidance_rna": 2.0},
                   "captions": data.meta.get("captions")},
        "autoencoder": ae_info,
        "feature_extractor": extractor.describe(),
        "readout": readout.describe(),
        "readout_on_real_c5_crops": R.readout_agreement(readout.predict(data.pixels[held], latents[held]), true),
        "setup_seconds": round(time.time() - started, 1),
        "seeds": [],
    }
    pooled = {"rna": [], "none": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            entry, arrays = run_seed(data, vae, latents, readout, held, f_real, extractor, seed=seed, images=args.images,
                                     steps=args.steps, workdir=Path(tmp))
            report["seeds"].append(entry)
            for mode in pooled:
                pooled[mode].append(arrays[mode])
            report["summary"] = summarise(report["seeds"], pooled, true)
            report["total_seconds"] = round(time.time() - started, 1)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")  # after every seed: partial results survive
            print(f"seed {seed}: {json.dumps({m: entry[m]['readout']['matched']['value'] for m in ('rna', 'none')})} "
                  f"{time.time() - started:.0f} s", flush=True)
    print(json.dumps(report["summary"]["verdict"], indent=2))


if __name__ == "__main__":
    main()
