"""``mupd demo``: the first run. Trains, on a CPU in a few minutes, a small text-conditioned MuPD on
real PCam lymph-node patches (or any class-per-folder patch set), and writes what it made:

    OUT/samples.png     real patches vs generated ones, one pair of rows per class caption
    OUT/metrics.json    loss curve summary, FID/KID vs held-out real patches (extractor named),
                        autoencoder reconstruction quality, images seen, timings
    OUT/report.html     the same, readable
    OUT/checkpoint/     the pipeline folder (model + EMA + autoencoder + text encoder spec)

No pretrained autoencoder is available offline, so the demo first trains a tiny AutoencoderKL
(about a quarter of the budget), encodes the patches, then trains the generator for the rest.
Training is time-boxed; the seed is fixed and the number of images seen is recorded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..errors import MupdError

PCAM_CAPTIONS = {"0": "lymph node, normal tissue", "1": "lymph node, metastatic tumour"}
DEMO_MODEL = {"depth": 4, "hidden_size": 128, "num_heads": 4}
DEMO_AUTOENCODER = (16, 32, 32)  # 4x down: 64 px patches -> 16x16 latents


def find_data(data: str | None, seed: int) -> tuple[Path, Path | None, dict, str]:
    """(train folder, held-out folder or None, captions by label, description)."""
    from ..settings import sample_data_dir

    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise MupdError(f"--data {root} is not a folder; pass a folder with one sub-folder of image patches per class")
        return root, None, {}, f"user folder {root}"
    sample = sample_data_dir()
    if sample is not None and (sample / "pcam" / "train").is_dir():
        return sample / "pcam" / "train", sample / "pcam" / "valid", dict(PCAM_CAPTIONS), f"PCam sample patches ({sample / 'pcam'})"
    raise MupdError(
        "mupd demo needs image patches: either the project's sample data (set MUPD_SAMPLE_DATA to the folder "
        "that holds pcam/train/{0,1}/*.jpg) or --data FOLDER with one sub-folder of patches per class, "
        "e.g. FOLDER/normal/*.png and FOLDER/tumour/*.png")


def _records(root: Path, per_class: int | None):
    from ..data.folders import patch_folder

    records = patch_folder(root, limit_per_class=per_class)
    if any(r.label is None for r in records):
        raise MupdError(f"{root} has no class sub-folders; the demo needs FOLDER/<class>/<patch> to condition on the class caption")
    return records


def _split(records, holdout_folder: Path | None, n_eval: int, seed: int):
    """Training records and held-out records (the held-out folder, else 10 % per class)."""
    from ..data.folders import patch_folder

    if holdout_folder is not None:
        classes = sorted({r.label for r in records})
        held = patch_folder(holdout_folder, limit_per_class=max(n_eval // len(classes), 2))
        return records, held
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in sorted({r.label for r in records}, key=str):
        group = [r for r in records if r.label == label]
        order = rng.permutation(len(group))
        k = max(2, len(group) // 10)
        held += [group[i] for i in order[:k]]
        train += [group[i] for i in order[k:]]
    if not train:
        raise MupdError("the demo data is too small: each class needs at least 3 patches")
    return train, held


def idle_threads() -> int:
    """Intra-op threads to use: the cores not already busy (on a shared machine OpenMP threads that
    compete for busy cores make small ops many times slower than one thread does)."""
    import os

    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(torch.get_num_threads(), int(cores - load + 0.5)))


def run_demo(*, minutes: float = 5.0, out: str | Path = "./mupd-demo", device: str | None = None, data: str | None = None,
             image_size: int = 64, seed: int = 0, progress: bool = True, eval_samples: int | None = None, sample_steps: int = 20,
             threads: int | None = None) -> dict:
    """Run the demo; returns ``{"out": folder, "metrics": the metrics.json dict}``.

    ``eval_samples``: generated (and held-out real) patches for FID/KID, default ~26 per minute of
    budget (max 128); ``sample_steps``: Heun steps for the samples."""
    from ..checkpoint import write_json
    from ..settings import settings
    from ..encoders.vae import LatentAutoencoder
    from ..encoders.vae_train import fit_autoencoder, reconstruction_metrics
    from .config import TrainConfig
    from .data import TrainData, captions_for, encode_pixels, load_pixels
    from .loop import Trainer

    if minutes <= 0:
        raise MupdError(f"--minutes must be positive, got {minutes}")
    if image_size % 16:
        raise MupdError(f"--image-size must be a multiple of 16 (4x autoencoder x patch 2 x 2), got {image_size}")
    t_start = time.perf_counter()
    budget = 60.0 * minutes
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dev = settings.torch_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(threads or idle_threads())

    train_root, holdout_root, captions, source = find_data(data, seed)
    n_train = int(min(4000, max(128, 700 * minutes)))
    n_eval = int(eval_samples or min(128, max(16, 26 * minutes)))
    records = _records(train_root, max(n_train // 2, 8))  # per class, first in sorted order
    train_recs, held_recs = _split(records, holdout_root, n_eval, seed)
    order = np.random.default_rng(seed).permutation(len(train_recs))  # classes interleaved
    train_recs = [train_recs[i] for i in order]
    classes = sorted({r.label for r in train_recs}, key=str)
    if not captions:
        captions = {str(c): str(c).replace("_", " ") for c in classes}
        for r in train_recs:
            captions[str(r.label)] = str(r.meta.get("class_name", r.label)).replace("_", " ")
    pixels = load_pixels([r.image for r in train_recs], image_size)
    held_pixels = load_pixels([r.image for r in held_recs], image_size)
    labels = [r.label for r in train_recs]

    # 1. the autoencoder (~ a quarter of the budget)
    vae = LatentAutoencoder.tiny(block_out_channels=DEMO_AUTOENCODER, latent_channels=4, sample_size=image_size,
                                 norm_num_groups=8, seed=seed).to(dev)
    ae = fit_autoencoder(vae, pixels.float() / 127.5 - 1.0, seconds=0.25 * budget, batch_size=32, lr=2e-3,
                         crop=32, seed=seed, progress=progress)
    vae.meta.update(trained_by="mupd demo", images_seen=ae["images_seen"])
    vae.fit_latent_stats(pixels[s:s + 64].to(dev).float() / 127.5 - 1.0 for s in range(0, min(len(pixels), 1024), 64))
    recon = reconstruction_metrics(vae, held_pixels.to(dev).float() / 127.5 - 1.0)

    # 2. latents + the generator (the rest, minus room for sampling and metrics)
    latents = _encode_within(vae, pixels, deadline=time.perf_counter() + 0.1 * budget, progress=progress)
    if len(latents) < len(pixels):  # the encoding budget ran out: train on the patches encoded so far
        pixels, labels, train_recs = pixels[: len(latents)], labels[: len(latents)], train_recs[: len(latents)]
    label_ids = torch.tensor([classes.index(lab) for lab in labels])
    train_data = TrainData(latents, label_ids, captions_for(labels, captions), ids=[r.id for r in train_recs], class_names=[str(c) for c in classes])
    cfg = TrainConfig.from_dict({
        "preset": "demo", "output": str(out), "seed": seed,
        "model": {"overrides": dict(DEMO_MODEL)},
        "data": {"source": "folder", "path": str(train_root), "image_size": image_size, "captions": captions},
        "conditions": {"text": {"name": "hashed-words", "kwargs": {"width": 64, "max_length": 16}}},
        "intervals": {"log": 256, "preview": 0, "checkpoint": 0},
        "progress": progress,
    })
    trainer = Trainer(cfg, data=train_data, vae=vae, device=str(dev), resume=False)
    spent = time.perf_counter() - t_start
    gen_seconds = max(budget - spent - 0.1 * budget, 0.05 * budget)
    result = trainer.fit(max_seconds=gen_seconds)

    # 3. samples per class, FID/KID against held-out real patches
    from .preview import labelled_grid, sample_images, save_png

    per_class_eval = max(n_eval // len(classes), 8)  # 8 fill a row of samples.png
    rows, fakes, reals = [], [], []
    for k, cls in enumerate(classes):
        caption = captions[str(cls)]
        tokens, mask = trainer._encode_captions(trainer.encoders["text"], [caption] * per_class_eval)
        images = sample_images(trainer.ema.module, vae, {"text": (tokens, mask)}, per_class_eval, trainer.latent_shape,
                               method="heun", steps=sample_steps, guidance=cfg.preview.guidance, seed=seed + 1000 + k)
        fakes.append(images)
        real = [np.asarray(pixels[i].permute(1, 2, 0)) for i in range(len(labels)) if labels[i] == cls][:8]
        rows.append((f"real: {caption}", np.stack(real)))
        rows.append((f"generated: {caption}", images[:8]))
        reals.append(held_pixels[[i for i, r in enumerate(held_recs) if str(r.label) == str(cls)]])
    scale = max(1, 96 // image_size)
    save_png(labelled_grid(rows, scale=scale), out / "samples.png")
    fake_all = torch.from_numpy(np.concatenate(fakes)).permute(0, 3, 1, 2).contiguous()
    real_all = torch.cat(reals)
    evaluation = _fid_kid(real_all, fake_all, vae)

    losses = result["losses"]
    from .metrics_log import read_metrics

    curve = [{"images": r["images"], "loss": r["loss"]} for r in read_metrics(out)]
    k = max(1, len(losses) // 10)
    metrics = {
        "data": {"source": source, "train_patches": len(train_recs), "held_out_patches": len(held_recs), "image_size": image_size,
                 "classes": {str(c): captions[str(c)] for c in classes}},
        "settings": {"minutes": minutes, "seed": seed, "device": str(dev), "torch_threads": torch.get_num_threads(),
                     "note": "time-boxed: images seen depend on the machine's speed; the seed fixes data order and noise"},
        "autoencoder": {"block_out_channels": list(DEMO_AUTOENCODER), "downsample": vae.downsample, "steps": ae["steps"],
                        "images_seen": ae["images_seen"], "seconds": round(ae["seconds"], 1), "held_out_reconstruction": recon},
        "generator": {"model": {"preset": "tiny", **DEMO_MODEL, "parameters": trainer.model.num_parameters()},
                      "images_seen": result["images_seen"], "steps": result["steps"], "seconds": round(result["seconds"], 1),
                      "images_per_s": round(result["images_per_s"], 2), "loss_first_10pct": float(np.mean(losses[:k])),
                      "loss_last_10pct": float(np.mean(losses[-k:])), "loss_curve": curve,
                      "sampler": {"method": "heun", "steps": sample_steps, "guidance": cfg.preview.guidance}},
        "evaluation": evaluation,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(out / "metrics.json", metrics)
    from .report import write_report

    write_report(out, metrics)
    return {"out": str(out), "metrics": metrics}


def _encode_within(vae, pixels: torch.Tensor, *, deadline: float, progress: bool, chunk: int = 64) -> torch.Tensor:
    """Encode in an interleaved class order until ``deadline`` (at least two chunks)."""
    from .data import encode_pixels

    out = []
    for start in range(0, len(pixels), chunk):
        if start >= 2 * chunk and time.perf_counter() > deadline:
            break
        out.append(encode_pixels(vae, pixels[start:start + chunk], batch_size=chunk, progress=False))
    return torch.cat(out)


def _fid_kid(real: torch.Tensor, fake: torch.Tensor, vae) -> dict:
    """FID/KID of generated vs held-out real patches, and of autoencoder reconstructions (the floor)."""
    from ..metrics.distribution import fid_kid
    from ..metrics.features import build_extractor

    extractor = build_extractor(None)
    f_real = extractor.extract(real)
    f_fake = extractor.extract(fake)
    with torch.no_grad():
        recon = vae.decode(vae.encode(real.to(vae.device).float() / 127.5 - 1.0))
    f_recon = extractor.extract(((recon + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu())
    kw = {"min_samples": 2, "n_resamples": 200, "kid_subset_size": min(len(real), len(fake), 100)}
    return {
        "feature_extractor": extractor.describe(),
        "reference": "held-out real patches (not used for training)",
        "generated_vs_real": fid_kid(f_real, f_fake, **kw),
        "autoencoder_reconstructions_vs_real": fid_kid(f_real, f_recon, **kw),
    }
