"""Train a small ``AutoencoderKL`` (``mupd.encoders.vae.LatentAutoencoder``) when no pretrained one
is at hand (``mupd demo``, new stains / channel counts). Reconstruction L1 + MSE and a small KL
term, AdamW, a time or image budget; then per-channel latent statistics are fitted so the
generator sees standardised latents.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import MupdError


@dataclass
class AutoencoderResult:
    vae: object
    steps: int
    images_seen: int
    seconds: float
    losses: list
    downsample: int


def train_autoencoder(pixels: torch.Tensor, *, seconds: float | None = None, max_images: int | None = None, block_out_channels=(16, 32, 32),
                      latent_channels: int = 4, batch_size: int = 32, crop: int | None = 32, lr: float = 2e-3, kl_weight: float = 1e-6,
                      seed: int = 0, device: torch.device | str = "cpu", progress: bool = True) -> AutoencoderResult:
    """Fit a tiny KL autoencoder on uint8 pixels (N, 3, H, W); 3 blocks = 4x downsampling.

    The network is convolutional, so it trains on random ``crop`` x ``crop`` windows (4x cheaper
    than 64 px patches on a CPU) and still encodes whole patches afterwards."""
    from tqdm.auto import tqdm

    from ..encoders.vae import LatentAutoencoder

    if seconds is None and max_images is None:
        raise MupdError("train_autoencoder needs a budget: seconds= or max_images=")
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise MupdError(f"train_autoencoder expects uint8 pixels (N, 3, H, W), got {tuple(pixels.shape)} {pixels.dtype}")
    device = torch.device(device)
    wrapper = LatentAutoencoder.tiny(block_out_channels=tuple(block_out_channels), latent_channels=latent_channels,
                                     sample_size=pixels.shape[-1], norm_num_groups=8, seed=seed)
    vae = wrapper.vae.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    n = len(pixels)
    order, pos = torch.randperm(n, generator=g), 0
    losses, seen, step = [], 0, 0
    start = time.perf_counter()
    bar = tqdm(desc="autoencoder", unit="img", unit_scale=True, disable=not progress, total=max_images)
    while True:
        elapsed = time.perf_counter() - start
        if (seconds is not None and elapsed >= seconds) or (max_images is not None and seen >= max_images):
            break
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        x = pixels[idx]
        if crop is not None and crop < x.shape[-1]:
            top, left = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=g))
            x = x[..., top:top + crop, left:left + crop]
        x = x.to(device).float() / 127.5 - 1.0
        if torch.rand((), generator=g) < 0.5:  # flips: tissue has no orientation
            x = x.flip(-1)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=torch.Generator(device=device).manual_seed(seed * 100_003 + step))
        recon = vae.decode(z).sample
        loss_rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        loss = loss_rec + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        seen += len(idx)
        losses.append(float(loss_rec.detach()))
        bar.update(len(idx))
        bar.set_postfix(recon=f"{loss_rec.item():.4f}")
    bar.close()
    vae.eval().requires_grad_(False)
    wrapper = LatentAutoencoder(vae, meta={"trained_by": "mupd.train.autoencoder", "images_seen": seen, "steps": step})
    batches = (pixels[s:s + 64].to(device).float() / 127.5 - 1.0 for s in range(0, min(n, 1024), 64))
    wrapper.fit_latent_stats(batches)
    return AutoencoderResult(wrapper, step, seen, time.perf_counter() - start, losses, wrapper.downsample)


@torch.no_grad()
def reconstruction_error(vae, pixels: torch.Tensor, batch_size: int = 64) -> dict:
    """MSE and PSNR (images in [-1, 1] -> PSNR on [0, 1]) of encode -> decode on uint8 pixels."""
    errors = []
    for s in range(0, len(pixels), batch_size):
        x = pixels[s:s + batch_size].to(vae.device).float() / 127.5 - 1.0
        recon = vae.decode(vae.encode(x))
        errors.append(((recon - x) / 2).pow(2).flatten(1).mean(1).cpu())
    mse = torch.cat(errors)
    return {"mse": float(mse.mean()), "psnr_db": float((-10 * torch.log10(mse.clamp_min(1e-10))).mean()), "n": int(len(mse))}
