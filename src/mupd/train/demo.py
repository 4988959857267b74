"""``mupd demo``: the first run. Trains, on a CPU in a few minutes, a small text-conditioned MuPD on
real PCam lymph-node patches (or any class-per-folder patch set), and writes what it made:

    OUT/samples.png     real patches vs generated ones, one pair of rows per class caption
    OUT/metrics.json    loss curve summary, FID/KID vs held-out real patches (extractor named),
                        autoencoder reconstruction quality, images seen, timings
    OUT/report.html     the same, readable
    OUT/checkpoint/     the pipeline folder (model + EMA + autoencoder + text encoder spec)

The latent space is, by default, the pretrained TAEF2 tiny autoencoder (MIT; 32 channels at 1/8
size, found offline by ``mupd.encoders.taesd.find_taef2``): the demo encodes the patches and spends
its whole budget on the generator. ``autoencoder="trained"`` (or no TAEF2 on disk) trains a tiny
AutoencoderKL first, for a quarter of the budget. Training is time-boxed; the seed is fixed and the
number of images seen is recorded. The evaluation (``demo_check``) scores every generated patch
with a small classifier trained on the real patches and reports FID of generated and of
reconstructed patches against held-out real ones, in that classifier's feature space.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..errors import MupdError

PCAM_CAPTIONS = {"0": "lymph node, normal tissue", "1": "lymph node, metastatic tumour"}
DEMO_MODEL = {"depth": 4, "hidden_size": 128, "num_heads": 4}
# guidance 3 only for 0.1 <= t <= 0.9: on the default model, vs guidance 2 throughout, the requested class is recognised
# in 78.2 % vs 76.4 % of 500 patches at FID 0.75 vs 0.77 and 5 % less sampling CPU (benchmarks/demo_choice.py; within
# the CIs, the patches look the same); time-shifted grids change nothing, Euler-Maruyama is worse
DEMO_SAMPLER = {"method": "heun", "steps": 20, "guidance": 3.0, "schedule": "linear", "shift": 1.0, "guidance_interval": [0.1, 0.9]}
DEMO_AUTOENCODER = (16, 32, 32)  # the trained fallback: 4x down, 4 latent channels
AUTOENCODERS = ("auto", "taef2", "trained")


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


def resolve_autoencoder(choice: str) -> tuple[str, Path | None, str]:
    """("taef2" | "trained", TAEF2 folder or None, a line saying which and why)."""
    from ..encoders.taesd import TAEF2_LICENSE, find_taef2

    if choice not in AUTOENCODERS:
        raise MupdError(f"--autoencoder must be one of {', '.join(AUTOENCODERS)}, got {choice!r}")
    if choice == "trained":
        return "trained", None, "a tiny AutoencoderKL trained by this demo (asked for)"
    folder = find_taef2(required=choice == "taef2")
    if folder is None:
        return "trained", None, ("a tiny AutoencoderKL trained by this demo (the pretrained TAEF2 was not found: "
                                 "set MUPD_MODELS to the folder holding taef2/)")
    return "taef2", folder, f"pretrained TAEF2 from {folder}, licence {TAEF2_LICENSE}"


def run_demo(*, minutes: float = 5.0, out: str | Path = "./mupd-demo", device: str | None = None, data: str | None = None,
             image_size: int = 96, seed: int = 0, progress: bool = True, eval_samples: int | None = None, sample_steps: int | None = None,
             threads: int | None = None, autoencoder: str = "auto", model: dict | None = None, batch_size: int = 32,
             lr: float = 1e-3, guidance: float | None = None, sampler: dict | None = None, train_patches: int | None = None, max_images: int | None = None,
             classifier_steps: int = 600, autoencoder_seconds: float | None = None) -> dict:
    """Run the demo; returns ``{"out": folder, "metrics": the metrics.json dict}``.

    ``minutes``: training budget (encoding + autoencoder + generator); the evaluation comes after.
    ``eval_samples``: generated patches for the evaluation (default 500, as many held-out real ones);
    ``max_images``: stop the generator at this many images seen (for comparisons at equal images);
    ``autoencoder_seconds``: training time of the trained autoencoder (default a quarter of the budget);
    ``sampler``: overrides of ``DEMO_SAMPLER`` (any ``mupd.flow.sample`` keyword: method, steps,
    guidance, schedule, shift, guidance_interval); ``sample_steps`` / ``guidance`` override those two."""
    from ..checkpoint import write_json
    from ..settings import apply_threads, settings

    if minutes <= 0:
        raise MupdError(f"--minutes must be positive, got {minutes}")
    if image_size % 16:
        raise MupdError(f"--image-size must be a multiple of 16 (autoencoder x patch 2), got {image_size}")
    kind, taef2_folder, ae_line = resolve_autoencoder(autoencoder)
    sampler = demo_sampler(sampler, sample_steps, guidance)
    if progress:
        print(f"mupd demo: latent space = {ae_line}", flush=True)
    t_start = time.perf_counter()
    budget = 60.0 * minutes
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dev = settings.torch_device(device)
    if dev.type == "cpu":
        apply_threads(threads)

    d = _prepare_data(data, seed, image_size, minutes, train_patches, eval_samples)
    vae, ae_info, latents = _latent_space(kind, taef2_folder, d, dev, budget, seed, progress, autoencoder_seconds)
    ae_info["which"] = ae_line
    n = len(latents)
    d["pixels"], d["labels"], d["train_recs"] = d["pixels"][:n], d["labels"][:n], d["train_recs"][:n]
    trainer, result, cfg = _train_generator(d, vae, latents, dev, out, seed, image_size, progress, model or dict(DEMO_MODEL),
                                            batch_size, lr, max(budget - (time.perf_counter() - t_start), 0.05 * budget), max_images)
    t_eval, cpu_eval = time.perf_counter(), time.process_time()
    evaluation = _sample_and_evaluate(d, trainer, vae, dev, out, seed, sampler, classifier_steps, progress)
    from .demo_check import plain_sentence

    evaluation["summary"] = plain_sentence(evaluation)
    ae_info["held_out_reconstruction"] = evaluation.pop("held_out_reconstruction")
    losses = result["losses"]
    from .metrics_log import read_metrics

    curve = [{"images": r["images"], "loss": r["loss"]} for r in read_metrics(out)]
    k = max(1, len(losses) // 10)
    metrics = {
        "data": {"source": d["source"], "train_patches": n, "held_out_patches": len(d["held_recs"]), "image_size": image_size,
                 "classes": {str(c): d["captions"][str(c)] for c in d["classes"]}},
        "settings": {"minutes": minutes, "seed": seed, "device": str(dev), "torch_threads": torch.get_num_threads(),
                     "batch_size": batch_size, "lr": lr,
                     "note": "time-boxed: images seen depend on the machine's speed; the seed fixes data order and noise"},
        "autoencoder": ae_info,
        "generator": {"model": {"preset": "tiny", **(model or DEMO_MODEL), "parameters": trainer.model.num_parameters()},
                      "images_seen": result["images_seen"], "steps": result["steps"], "seconds": round(result["seconds"], 1),
                      "images_per_s": round(result["images_per_s"], 2), "loss_first_10pct": float(np.mean(losses[:k])),
                      "loss_last_10pct": float(np.mean(losses[-k:])), "loss_curve": curve,
                      "sampler": sampler},
        "evaluation": evaluation,
        "evaluation_seconds": round(time.perf_counter() - t_eval, 1),
        "evaluation_cpu_seconds": round(time.process_time() - cpu_eval, 1),  # all threads; load-independent
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(out / "metrics.json", metrics)
    from .report import write_report

    write_report(out, metrics)
    return {"out": str(out), "metrics": metrics}


def _prepare_data(data, seed, image_size, minutes, train_patches, eval_samples) -> dict:
    from .data import load_pixels

    train_root, holdout_root, captions, source = find_data(data, seed)
    n_train = int(train_patches or min(4000, max(128, 700 * minutes)))
    n_eval = int(eval_samples or 500)
    records = _records(train_root, max(n_train // 2, 8))  # per class, first in sorted order
    train_recs, held_recs = _split(records, holdout_root, n_eval, seed)
    order = np.random.default_rng(seed).permutation(len(train_recs))  # classes interleaved
    train_recs = [train_recs[i] for i in order]
    classes = sorted({r.label for r in train_recs}, key=str)
    if not captions:
        captions = {str(c): str(c).replace("_", " ") for c in classes}
        for r in train_recs:
            captions[str(r.label)] = str(r.meta.get("class_name", r.label)).replace("_", " ")
    return {"train_root": train_root, "source": source, "captions": captions, "classes": classes, "n_eval": n_eval,
            "train_recs": train_recs, "held_recs": held_recs, "labels": [r.label for r in train_recs],
            "pixels": load_pixels([r.image for r in train_recs], image_size),
            "held_pixels": load_pixels([r.image for r in held_recs], image_size)}


def _latent_space(kind, taef2_folder, d, dev, budget, seed, progress, ae_seconds=None):
    """(autoencoder with fitted latent stats, its description, standardised training latents)."""
    from ..encoders.vae import LatentAutoencoder
    from ..encoders.vae_train import fit_autoencoder

    pixels = d["pixels"]
    t0 = time.perf_counter()
    if kind == "taef2":
        vae = LatentAutoencoder.from_pretrained(taef2_folder, device=dev)
        info = {"kind": "taef2", "pretrained": str(taef2_folder), "license": "MIT", "trained_seconds": 0}
        encode_share = 0.3
    else:
        vae = LatentAutoencoder.tiny(block_out_channels=DEMO_AUTOENCODER, latent_channels=4, sample_size=pixels.shape[-1],
                                     norm_num_groups=8, seed=seed).to(dev)
        ae = fit_autoencoder(vae, pixels.float() / 127.5 - 1.0, seconds=ae_seconds or 0.25 * budget, batch_size=32, lr=2e-3,
                             crop=32, seed=seed, progress=progress)
        vae.meta.update(trained_by="mupd demo", images_seen=ae["images_seen"])
        info = {"kind": "trained", "block_out_channels": list(DEMO_AUTOENCODER), "steps": ae["steps"], "license": "yours",
                "images_seen": ae["images_seen"], "trained_seconds": round(ae["seconds"], 1)}
        encode_share = 0.1
    raw = _encode_within(vae, pixels, deadline=time.perf_counter() + encode_share * budget, progress=progress)
    flat = raw.double().transpose(0, 1).reshape(raw.shape[1], -1)
    vae.latent_mean.copy_(flat.mean(1).float())
    vae.latent_std.copy_(flat.std(1).float().clamp_min(1e-6))
    vae.meta["stats_n_values"] = int(flat.shape[1])
    latents = (raw - vae.latent_mean.view(1, -1, 1, 1).cpu()) / vae.latent_std.view(1, -1, 1, 1).cpu()
    info.update(downsample=vae.downsample, latent_shape=list(latents.shape[1:]), encode_seconds=round(time.perf_counter() - t0, 1))
    return vae, info, latents


def _train_generator(d, vae, latents, dev, out, seed, image_size, progress, model, batch_size, lr, seconds, max_images):
    from .config import TrainConfig
    from .data import TrainData, captions_for
    from .loop import Trainer

    labels, classes = d["labels"], d["classes"]
    label_ids = torch.tensor([classes.index(lab) for lab in labels])
    train_data = TrainData(latents, label_ids, captions_for(labels, d["captions"]), ids=[r.id for r in d["train_recs"]],
                           class_names=[str(c) for c in classes])
    cfg = TrainConfig.from_dict({
        "preset": "demo", "output": str(out), "seed": seed,
        "model": {"overrides": dict(model)},
        "data": {"source": "folder", "path": str(d["train_root"]), "image_size": image_size, "captions": d["captions"]},
        "conditions": {"text": {"name": "hashed-words", "kwargs": {"width": 64, "max_length": 16}}},
        "batch": {"global_size": batch_size, "per_device": batch_size}, "optim": {"lr": lr, "grad_clip": 1.0},
        "total_images": int(max_images or 1_000_000),
        "intervals": {"log": 256, "preview": 0, "checkpoint": 0},
        "progress": progress,
    })
    trainer = Trainer(cfg, data=train_data, vae=vae, device=str(dev), resume=False)
    return trainer, trainer.fit(max_seconds=seconds), cfg


def _sample_and_evaluate(d, trainer, vae, dev, out, seed, sampler, classifier_steps, progress) -> dict:
    """samples.png, then the classifier check and FID/KID of generated and reconstructed patches."""
    from tqdm.auto import tqdm

    from .demo_check import evaluate_generations, train_classifier
    from .preview import labelled_grid, save_png

    classes, captions, labels = d["classes"], d["captions"], d["labels"]
    per_class = max(d["n_eval"] // len(classes), 8)
    rows, fakes, fake_labels = [], [], []
    bar = tqdm(total=per_class * len(classes) * 2, desc="sampling + reconstructing", unit="img", disable=not progress)
    for k, cls in enumerate(classes):
        tokens, mask = trainer._encode_captions(trainer.encoders["text"], [captions[str(cls)]] * 50)
        chunks = []
        for start in range(0, per_class, 50):
            n = min(50, per_class - start)
            chunks.append(generate(trainer.ema.module, vae, {"text": (tokens[:n], mask[:n])}, n, trainer.latent_shape,
                                   sampler, seed=seed + 1000 + 97 * k + start))
            bar.update(n)
        images = np.concatenate(chunks)
        fakes.append(images)
        fake_labels += [k] * len(images)
        rows.append((f"generated: {captions[str(cls)]}", images[:8]))
    held = d["held_pixels"]
    recon = []
    for start in range(0, len(held), 50):
        recon.append(torch.from_numpy(reconstruct(vae, held[start:start + 50])))
        bar.update(len(recon[-1]))
    bar.close()
    recon_all = torch.cat(recon).permute(0, 3, 1, 2).contiguous()
    real_labels = np.array([classes.index(r.label) for r in d["held_recs"]])
    grid = []
    for k, cls in enumerate(classes):  # held-out real, their reconstructions (the latent space's ceiling), generated
        shown = np.flatnonzero(real_labels == k)[:8]
        grid.append((f"real (held out): {captions[str(cls)]}", np.asarray(held[shown].permute(0, 2, 3, 1))))
        grid.append(("  autoencoder reconstruction", np.asarray(recon_all[shown].permute(0, 2, 3, 1))))
        grid.append(rows[k])
    save_png(labelled_grid(grid, scale=max(1, 192 // held.shape[-1])), out / "samples.png")
    y = torch.tensor([classes.index(lab) for lab in labels])
    classifier, c_steps = train_classifier(d["pixels"], y, seconds=float("inf"), max_steps=classifier_steps, seed=seed,
                                           classes=len(classes), progress=progress)
    fake = torch.from_numpy(np.concatenate(fakes)).permute(0, 3, 1, 2).contiguous()
    evaluation = evaluate_generations(classifier, real=held, real_labels=real_labels, fake=fake,
                                      fake_labels=np.array(fake_labels), recon=recon_all)
    evaluation["class_recognition"]["classifier"] = {"steps": c_steps, "batch_size": 64, "train_patches": len(y)}
    evaluation["held_out_reconstruction"] = _psnr_ssim(held, recon_all)
    return evaluation


def demo_sampler(overrides: dict | None = None, steps: int | None = None, guidance: float | None = None) -> dict:
    """``DEMO_SAMPLER`` with overrides, checked before any model loads."""
    from ..flow.samplers import METHODS, time_grid

    sampler = {**DEMO_SAMPLER, **(overrides or {})}
    if steps is not None:
        sampler["steps"] = steps
    if guidance is not None:
        sampler["guidance"] = guidance
    if sampler["method"] not in METHODS:
        raise MupdError(f"sampler method must be one of {', '.join(METHODS)}, got {sampler['method']!r}")
    time_grid(int(sampler["steps"]), sampler["schedule"], float(sampler["shift"]))  # raises on a bad steps/schedule/shift
    if "guidance_interval" in sampler:
        interval = [float(v) for v in sampler["guidance_interval"]]
        if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
            raise MupdError(f"sampler guidance_interval must be [low, high] with 0 <= low <= high <= 1, got {sampler['guidance_interval']}")
        sampler["guidance_interval"] = interval
    return sampler


@torch.no_grad()
def generate(model, vae, conditions: dict, n: int, latent_shape, sampler: dict, *, seed: int) -> np.ndarray:
    """n decoded patches (uint8 (n, H, W, 3)) for one batch of conditions, deterministic in ``seed``."""
    from ..data.images import to_uint8
    from ..flow import sample

    device = next(model.parameters()).device
    noise = torch.randn((n, *latent_shape), generator=torch.Generator().manual_seed(seed)).to(device)
    kwargs = dict(sampler)
    if "guidance_interval" in kwargs:
        kwargs["guidance_interval"] = tuple(kwargs["guidance_interval"])
    was_training = model.training
    model.eval()
    latents = sample(model, noise, conditions, generator=torch.Generator(device=device).manual_seed(seed + 1), **kwargs)
    model.train(was_training)
    return to_uint8(vae.decode(latents.float()))


@torch.no_grad()
def reconstruct(vae, pixels: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) patches through the autoencoder and back: uint8 (N, H, W, 3)."""
    from ..data.images import to_uint8
    from .data import encode_pixels

    z = encode_pixels(vae, pixels, batch_size=len(pixels), progress=False)
    return to_uint8(vae.decode(z.to(vae.device)))


def _psnr_ssim(real: torch.Tensor, recon: torch.Tensor) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pairs = list(zip(real.permute(0, 2, 3, 1).numpy(), recon.permute(0, 2, 3, 1).numpy()))
    return {"psnr": float(np.mean([peak_signal_noise_ratio(a, b, data_range=255) for a, b in pairs])),
            "ssim": float(np.mean([structural_similarity(a, b, channel_axis=2, data_range=255) for a, b in pairs])),
            "n_holdout": len(pairs)}


def _encode_within(vae, pixels: torch.Tensor, *, deadline: float, progress: bool, chunk: int = 64) -> torch.Tensor:
    """Raw latents, encoded in an interleaved class order until ``deadline`` (at least two chunks)."""
    from tqdm.auto import tqdm

    out = []
    for start in tqdm(range(0, len(pixels), chunk), desc="encoding patches", unit="batch", disable=not progress, leave=False):
        if start >= 2 * chunk and time.perf_counter() > deadline:
            break
        x = pixels[start:start + chunk].to(vae.device).float() / 127.5 - 1.0
        out.append(vae.encode_raw(x).cpu())
    return torch.cat(out)
