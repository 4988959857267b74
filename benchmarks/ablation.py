"""The paper's ablations at CPU scale: decoupled vs shared attention, and representation alignment
(+ CLS) vs none. Every arm of a comparison sees the same images (same count, same seeds, same
data order); wall-clock is reported, not equalised (the arms differ in cost per image).

* her2st RNA recipe (``mupd.train.demo_her2st``: RNA + region captions, sections B4, C2-C4;
  measured on held-out C5 from RNA-conditioned samples): FID/KID to the real crops of the same
  spots, and the expression read-out's matched-minus-shuffled Pearson (does the RNA show?);
  arms ``decoupled``, ``shared``, ``decoupled+align`` (REPA-style alignment of block 2 to the
  ``mupd-aligned`` image tower trained here on the same training sections, plus its CLS token);
* PCam text (captions "lymph node, normal tissue" / "lymph node, metastatic tumour"): FID/KID of
  caption-conditioned samples to held-out valid patches; arms ``decoupled``, ``shared``.

Gaps (arm - decoupled) come with t intervals over seeds, whatever their sign.

    OMP_NUM_THREADS=1 python benchmarks/ablation.py --out benchmarks/results/ablation_cpu.json
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

from multimodal_her2st import seed_interval
from mupd.train import demo_her2st as D
from mupd.train import report_her2st as R

PCAM_CAPTIONS = {"0": "lymph node, normal tissue", "1": "lymph node, metastatic tumour"}


def final_velocity_loss(out: Path) -> float | None:
    from mupd.train.metrics_log import read_metrics

    rows = [r for r in read_metrics(out) if "loss_v" in r]
    return float(np.mean([r["loss_v"] for r in rows[-3:]])) if rows else None


# --- her2st ----------------------------------------------------------------------------------------
def train_align_tower(workdir: Path, samples: int) -> Path:
    from mupd.align.config import preset
    from mupd.align.train import train_align

    config = preset("her2st-image-rna", total_samples=samples, train_sections=list(D.TRAIN_SECTIONS),
                    test_sections=list(D.HELD_OUT_SECTIONS))
    train_align(config, workdir / "align", progress=False)
    return workdir / "align"


def her2st_arm(ctx: dict, arm: str, seed: int, images: int, steps: int, workdir: Path) -> dict:
    data, vae, latents, readout, held = ctx["data"], ctx["vae"], ctx["latents"], ctx["readout"], ctx["held"]
    align = None
    if arm == "decoupled+align":
        align = {"encoder": "mupd-aligned", "path": str(ctx["align_path"]), "block": 2, "weight": 0.5, "cls_weight": 0.03,
                 "projector_dim": 64}
    out = workdir / f"her2st-{arm}-{seed}"
    t0 = time.perf_counter()
    trainer, result = D.fit_model(data, vae, latents, out, seed=seed, total_images=images, progress=False,
                                  attention="shared" if arm == "shared" else "decoupled", align=align)
    train_s = time.perf_counter() - t0
    fake = R.generate(trainer, data, held, "rna", steps=steps, seed=seed)
    true = data.pathway_scores[held][:, readout.targets]
    agreement = R.readout_agreement(readout.predict(fake), true, seed=seed)
    return {"arm": arm, "seed": seed, "images_seen": result["images_seen"], "train_seconds": round(train_s, 1),
            "parameters": trainer.model.num_parameters(), "final_velocity_loss": final_velocity_loss(out),
            "fid_kid": R.distribution(ctx["extractor"], ctx["f_real"], fake, seed=seed),
            "readout_matched_minus_shuffled": agreement["matched_minus_shuffled"]["value"],
            "readout_matched": agreement["matched"]["value"]}


# --- PCam ------------------------------------------------------------------------------------------
def pcam_context(per_class: int, held_per_class: int, vae) -> dict:
    from mupd.data.folders import patch_folder
    from mupd.settings import sample_data_dir
    from mupd.train.data import encode_pixels, load_pixels

    root = sample_data_dir() / "pcam"
    train = patch_folder(root / "train", limit_per_class=per_class)
    held = patch_folder(root / "valid", limit_per_class=held_per_class)
    pixels = load_pixels([r.image for r in train], D.SIZE)
    held_pixels = load_pixels([r.image for r in held], D.SIZE)
    labels = [str(r.label) for r in train]
    order = np.random.default_rng(0).permutation(len(train))  # classes interleaved
    return {"pixels": pixels[order], "labels": [labels[i] for i in order], "latents": encode_pixels(vae, pixels[order], progress=False),
            "held_pixels": held_pixels, "held_labels": [str(r.label) for r in held]}


def pcam_arm(ctx: dict, arm: str, seed: int, images: int, steps: int, workdir: Path) -> dict:
    from mupd.train.config import TrainConfig
    from mupd.train.data import TrainData, captions_for
    from mupd.train.loop import Trainer
    from mupd.train.preview import sample_images

    p = ctx["pcam"]
    out = workdir / f"pcam-{arm}-{seed}"
    cfg = TrainConfig.from_dict({
        "preset": "demo", "output": str(out), "seed": seed, "total_images": images, "progress": False,
        "model": {"attention": arm, "overrides": dict(D.DEMO_MODEL)},
        "data": {"source": "shards", "path": "(in memory)", "image_size": D.SIZE, "captions": PCAM_CAPTIONS},
        "conditions": {"text": {"name": "hashed-words", "kwargs": {"width": 64, "max_length": 16}}},
        "ema": {"decay": 0.995, "warmup": True}, "intervals": {"log": 512, "preview": 0, "checkpoint": 0},
    })
    data = TrainData(p["latents"], torch.tensor([int(x) for x in p["labels"]]), captions_for(p["labels"], PCAM_CAPTIONS))
    t0 = time.perf_counter()
    trainer = Trainer(cfg, data=data, vae=ctx["vae"], device="cpu", resume=False)
    result = trainer.fit()
    train_s = time.perf_counter() - t0
    fakes = []
    for k, label in enumerate(sorted(PCAM_CAPTIONS)):
        n = sum(1 for x in p["held_labels"] if x == label)
        cond = {"text": trainer._encode_captions(trainer.encoders["text"], [PCAM_CAPTIONS[label]] * n)}
        fakes.append(sample_images(trainer.ema.module, trainer.vae, cond, n, trainer.latent_shape, method="heun", steps=steps,
                                   guidance=2.0, seed=seed * 1000 + k))
    return {"arm": arm, "seed": seed, "images_seen": result["images_seen"], "train_seconds": round(train_s, 1),
            "parameters": trainer.model.num_parameters(), "final_velocity_loss": final_velocity_loss(out),
            "fid_kid": R.distribution(ctx["extractor"], ctx["f_pcam"], np.concatenate(fakes), seed=seed)}


# --- summary -------------------------------------------------------------------------------------
def gaps(runs: list[dict], arms: list[str], metrics: dict) -> dict:
    """Per arm: each metric's mean over seeds, and its gap to 'decoupled' (paired by seed)."""
    out = {}
    base = {r["seed"]: r for r in runs if r["arm"] == "decoupled"}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        entry = {"seeds": len(mine), "train_seconds": seed_interval([r["train_seconds"] for r in mine]),
                 "images_seen": sorted({r["images_seen"] for r in mine})}
        for name, get in metrics.items():
            entry[name] = seed_interval([get(r) for r in mine])
            if arm != "decoupled":
                paired = [(get(r), get(base[r["seed"]])) for r in mine if r["seed"] in base]
                if paired:
                    entry[f"{name}_minus_decoupled"] = seed_interval([a - b for a, b in paired])
                    if name == "fid":
                        entry["fid_relative_change"] = seed_interval([(a - b) / b for a, b in paired])
        out[arm] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=6144, help="training images per run (equal across arms)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--align-samples", type=int, default=2048, help="image<->RNA pairs seen by the alignment tower")
    parser.add_argument("--pcam-per-class", type=int, default=500)
    parser.add_argument("--pcam-held-per-class", type=int, default=100)
    parser.add_argument("--max-spots", type=int, default=None)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: her2st, pcam, align")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    skip = set(filter(None, args.skip.split(",")))
    started = time.time()
    from mupd.metrics.features import build_extractor
    from mupd.train.data import encode_pixels

    data = D.load_data(max_spots=args.max_spots)
    vae, ae_info = D.autoencoder(data.pixels[data.train], seconds=60, seed=0, progress=False)
    latents = encode_pixels(vae, data.pixels, progress=False)
    held = np.where(~data.train)[0]
    extractor = build_extractor(R.FID_EXTRACTOR)
    ctx = {"data": data, "vae": vae, "latents": latents, "held": held, "extractor": extractor,
           "readout": R.Readout(vae).fit(data, latents), "f_real": extractor.extract(data.pixels[held])}
    report = {"benchmark": "ablation", "torch": torch.__version__,
              "hardware": f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs (load average at start "
                          f"{os.getloadavg()[0]:.1f}), {args.threads} torch thread(s)",
              "model": D.DEMO_MODEL, "images_per_run": args.images, "sampler": {"method": "heun", "steps": args.steps, "guidance": 2.0},
              "autoencoder": ae_info, "feature_extractor": extractor.describe(), "readout": ctx["readout"].describe(),
              "note": "equal images seen per arm (same seeds and data order); train_seconds is each arm's wall clock on a shared machine",
              "runs": [], "errors": []}
    her2st_arms = ["decoupled", "shared"] + ([] if "align" in skip else ["decoupled+align"])
    pcam_arms = ["decoupled", "shared"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "align" not in skip and "her2st" not in skip:
            t0 = time.perf_counter()
            ctx["align_path"] = train_align_tower(workdir, args.align_samples)
            report["align_tower"] = {"preset": "her2st-image-rna", "samples": args.align_samples, "sections": list(D.TRAIN_SECTIONS),
                                     "seconds": round(time.perf_counter() - t0, 1)}
        if "pcam" not in skip:
            ctx["pcam"] = pcam_context(args.pcam_per_class, args.pcam_held_per_class, vae)
            ctx["f_pcam"] = extractor.extract(ctx["pcam"]["held_pixels"])
        report["setup_seconds"] = round(time.time() - started, 1)
        jobs = []
        for seed in range(args.seeds):  # seed-major: an interrupted run still has whole seeds
            jobs += [("her2st", a, seed) for a in her2st_arms if "her2st" not in skip]
            jobs += [("pcam", a, seed) for a in pcam_arms if "pcam" not in skip]
        for part, arm, seed in jobs:
            try:
                fn = her2st_arm if part == "her2st" else pcam_arm
                run = fn(ctx, arm, seed, args.images, args.steps, workdir)
                report["runs"].append({"part": part, **run})
            except Exception as exc:  # noqa: BLE001 - record and go on: one broken arm must not lose the rest
                report["errors"].append({"part": part, "arm": arm, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
            fid = lambda r: r["fid_kid"]["fid"]["value"]  # noqa: E731
            kid = lambda r: r["fid_kid"]["kid"]["value"]  # noqa: E731
            loss = lambda r: r["final_velocity_loss"]  # noqa: E731
            her = [r for r in report["runs"] if r["part"] == "her2st"]
            report["her2st"] = gaps(her, her2st_arms, {"fid": fid, "kid": kid, "final_velocity_loss": loss,
                                                       "readout_matched_minus_shuffled": lambda r: r["readout_matched_minus_shuffled"]})
            report["pcam"] = gaps([r for r in report["runs"] if r["part"] == "pcam"], pcam_arms,
                                  {"fid": fid, "kid": kid, "final_velocity_loss": loss})
            report["total_seconds"] = round(time.time() - started, 1)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
            print(f"{part} {arm} seed {seed}: done at {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
