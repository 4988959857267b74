"""``mupd vae train``: train a small ``AutoencoderKL`` from scratch on patch data.

Loss = L1 (or MSE) reconstruction + ``kl_weight`` * KL(posterior || N(0, I)); AdamW; a tqdm bar;
units are images seen. Every ``checkpoint_every`` images the state (weights, optimizer moments,
images seen) is written atomically to ``OUT/checkpoint/``; re-running the same command resumes.
The data order is a pure function of (seed, epoch), so a resumed run sees the same images.

At the end: latent statistics are fitted on the training images, the autoencoder is saved to
``OUT/`` (``LatentAutoencoder.save_pretrained`` layout) and reconstruction PSNR/SSIM
(``skimage.metrics``) on held-out patches go to ``OUT/metrics.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import require

PRESETS = {
    # name: (block_out_channels, downsample)
    "tiny": (32, 64),  # 2x
    "small": (32, 64, 64),  # 4x
    "f8": (64, 128, 128, 128),  # 8x, the SD layout at reduced width
}


@dataclass
class VAETrainConfig:
    data: str
    out: str
    preset: str = "small"
    latent_channels: int = 4
    size: int = 64
    samples: int = 4096  # images seen in training
    batch_size: int = 16
    lr: float = 1e-3
    kl_weight: float = 1e-6
    loss: str = "l1"  # "l1" | "mse"
    holdout: int = 32  # held-out patches for PSNR/SSIM
    limit: int | None = None  # patches per class read from the folder
    checkpoint_every: int = 1024
    seed: int = 0
    max_minutes: float | None = None


def _load_images(cfg: VAETrainConfig) -> torch.Tensor:
    from ..data.encode import EncodeJob, load_source
    from ..data.images import to_tensor

    records = load_source(EncodeJob(cfg.data, "", cfg.out, limit=cfg.limit))
    require(len(records) > cfg.holdout + 1, f"{cfg.data}: {len(records)} patches are too few for a hold-out of {cfg.holdout}")
    chunks = [to_tensor([r.image for r in records[i:i + 256]], cfg.size) for i in range(0, len(records), 256)]
    return torch.cat(chunks)


def _split(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:], perm[:holdout]


def _order(seed: int, n: int, start: int, count: int) -> torch.Tensor:
    out, pos = [], start
    while pos < start + count:
        epoch, offset = divmod(pos, n)
        take = min(n - offset, start + count - pos)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)
        out.append(torch.randperm(n, generator=g)[offset:offset + take])
        pos += take
    return torch.cat(out)


def _save_state(path: Path, vae, optim, seen: int, cfg: VAETrainConfig) -> None:
    from ..checkpoint import atomic_folder, save_tensors, write_json

    with atomic_folder(path) as tmp:
        save_tensors(tmp / "model.safetensors", vae.state_dict())
        flat = {}
        for i, state in optim.state_dict()["state"].items():
            for key, value in state.items():
                flat[f"{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        save_tensors(tmp / "optimizer.safetensors", flat)
        write_json(tmp / "state.json", {"images_seen": seen, "config": asdict(cfg)})


def _load_state(path: Path, vae, optim) -> int:
    from ..checkpoint import load_into, load_tensors, read_json

    load_into(vae, path / "model.safetensors")
    flat = load_tensors(path / "optimizer.safetensors")
    state = optim.state_dict()
    per_param: dict[int, dict] = {}
    for key, value in flat.items():
        i, name = key.split(".", 1)
        per_param.setdefault(int(i), {})[name] = value
    state["state"] = per_param
    optim.load_state_dict(state)
    return int(read_json(path / "state.json")["images_seen"])


def reconstruction_metrics(ae, images: torch.Tensor) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from ..data.images import to_uint8

    ae.eval()
    with torch.no_grad():
        recon = ae.decode(ae.encode(images))
    real, fake = to_uint8(images), to_uint8(recon)
    psnr = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(real, fake)]
    ssim = [structural_similarity(a, b, channel_axis=2, data_range=255) for a, b in zip(real, fake)]
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "n_holdout": len(real)}


def fit_autoencoder(ae, images: torch.Tensor, *, samples: int | None = None, seconds: float | None = None,
                    batch_size: int = 16, lr: float = 1e-3, kl_weight: float = 1e-6, loss: str = "l1",
                    crop: int | None = None, seed: int = 0, optim=None, seen: int = 0,
                    on_checkpoint=None, checkpoint_every: int | None = None, progress: bool = True) -> dict:
    """Train ``ae.vae`` (a :class:`LatentAutoencoder`'s ``AutoencoderKL``) on ``images`` in [-1, 1].

    The one training loop behind ``mupd vae train`` and ``mupd demo``. Budget: ``samples`` (images
    seen, counting from ``seen`` on a resume) and/or wall ``seconds``. Data order, random crops,
    flips and the posterior noise are pure functions of (seed, images seen), so a resumed run sees
    what an uninterrupted one would. ``on_checkpoint(seen, optim)`` runs every ``checkpoint_every``
    images and at the end. Latent statistics are not fitted here (``ae.fit_latent_stats``)."""
    from tqdm.auto import tqdm

    require(samples is not None or seconds is not None, "fit_autoencoder needs a budget: samples= or seconds=")
    require(loss in ("l1", "mse"), f"loss must be 'l1' or 'mse', not {loss!r}")
    vae, device = ae.vae, ae.device
    vae.requires_grad_(True).train()
    optim = optim or torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    bar = tqdm(total=samples, initial=min(seen, samples or 0), desc="autoencoder", unit="img", disable=not progress)
    started, last_save, losses = time.perf_counter(), seen, []
    g = torch.Generator()
    while samples is None or seen < samples:
        if seconds is not None and time.perf_counter() - started >= seconds:
            break
        count = batch_size if samples is None else min(batch_size, samples - seen)
        x = images[_order(seed, len(images), seen, count)]
        g.manual_seed(seed * 7919 + seen)
        if crop is not None and crop < x.shape[-1]:  # conv nets train on windows and still encode whole patches
            top, left = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=g))
            x = x[..., top:top + crop, left:left + crop]
        if torch.rand((), generator=g) < 0.5:  # tissue has no orientation
            x = x.flip(-1)
        x = x.to(device)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g).to(device)
        recon = vae.decode(z).sample
        rec = (recon - x).abs().mean() if loss == "l1" else ((recon - x) ** 2).mean()
        total = rec + kl_weight * dist.kl().mean()
        optim.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optim.step()
        seen += count
        losses.append(float(rec.detach()))
        bar.update(count)
        bar.set_postfix(recon=f"{losses[-1]:.4f}")
        if on_checkpoint is not None and checkpoint_every and seen - last_save >= checkpoint_every:
            on_checkpoint(seen, optim)
            last_save = seen
    bar.close()
    if on_checkpoint is not None and seen != last_save:
        on_checkpoint(seen, optim)
    vae.requires_grad_(False).eval()
    return {"images_seen": seen, "steps": len(losses), "losses": losses, "seconds": time.perf_counter() - started,
            "finished": samples is not None and seen >= samples, "final_loss": losses[-1] if losses else float("nan")}


def train_vae(cfg: VAETrainConfig, *, progress: bool = True) -> dict:
    from ..settings import settings
    from .vae import LatentAutoencoder

    require(cfg.preset in PRESETS, f"unknown VAE preset '{cfg.preset}'; choose one of {sorted(PRESETS)}")
    blocks = PRESETS[cfg.preset]
    require(cfg.size % 2 ** (len(blocks) - 1) == 0, f"size {cfg.size} must be a multiple of {2 ** (len(blocks) - 1)}")
    out = Path(cfg.out)
    images = _load_images(cfg)
    train_idx, held_idx = _split(len(images), cfg.holdout, cfg.seed)
    ae = LatentAutoencoder.tiny(latent_channels=cfg.latent_channels, block_out_channels=blocks, sample_size=cfg.size,
                                seed=cfg.seed).to(settings.torch_device())
    optim = torch.optim.AdamW(ae.vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    ckpt = out / "checkpoint"
    seen = _load_state(ckpt, ae.vae, optim) if (ckpt / "state.json").exists() else 0
    run = fit_autoencoder(
        ae, images[train_idx], samples=cfg.samples, seconds=None if cfg.max_minutes is None else 60 * cfg.max_minutes,
        batch_size=cfg.batch_size, kl_weight=cfg.kl_weight, loss=cfg.loss, seed=cfg.seed, optim=optim, seen=seen,
        on_checkpoint=lambda n, opt: _save_state(ckpt, ae.vae, opt, n, cfg), checkpoint_every=cfg.checkpoint_every,
        progress=progress)
    recon = _finish_with_progress(ae, images[train_idx], images[held_idx], progress)
    metrics = {"images_seen": run["images_seen"], "finished": run["finished"], "final_loss": run["final_loss"],
               "downsample": ae.downsample, "latent_channels": ae.latent_channels, "image_size": cfg.size,
               **recon, "config": asdict(cfg)}
    ae.meta["trained_on"] = str(cfg.data)
    _save_final(ae, out, metrics)
    return metrics


def _finish_with_progress(ae, train_images: torch.Tensor, held_images: torch.Tensor, progress: bool,
                          stats_images: int = 4096) -> dict:
    """Latent statistics (on at most ``stats_images`` training patches: per-channel mean/std settle long
    before that) and the held-out reconstruction metrics, under one progress bar."""
    from tqdm.auto import tqdm

    chunks = train_images[:stats_images].split(64)
    with tqdm(total=len(chunks) + 1, desc="latent stats + held-out eval", unit="batch", disable=not progress) as bar:
        def counted():
            for chunk in chunks:
                yield chunk.to(ae.device)
                bar.update(1)

        ae.fit_latent_stats(counted())
        recon = reconstruction_metrics(ae, held_images.to(ae.device))
        bar.update(1)
    return recon


def _save_final(ae, out: Path, metrics: dict) -> None:
    """The autoencoder files go next to checkpoint/ and metrics.json in OUT (written atomically each)."""
    import shutil

    from ..checkpoint import write_json

    staging = out.parent / f".{out.name}.final"
    ae.save_pretrained(staging)
    for f in staging.iterdir():
        shutil.move(str(f), str(out / f.name))
    shutil.rmtree(staging, ignore_errors=True)
    write_json(out / "metrics.json", {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()})
