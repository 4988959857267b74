"""Is it the network? ``mupd demo``'s MuPD against a peer denoiser, diffusers' ``UNet2DModel`` (a
convolutional U-Net with attention at the coarse level, 2.8 M parameters vs 1.8 M), trained by the
same loop on the same TAEF2 latents of the same PCam patches, in the same process: same
flow-matching loss (``mupd.flow.flow_matching_loss``), caption dropout, AdamW, warm-up, clipping,
EMA and images seen; sampled by the demo's sampler (``mupd.flow.sample``) and judged by the demo's
classifier. Records per network: throughput, final loss, denoising error of held-out latents
noised to t, class recognition and FID of generated patches (with the reconstructions' floor);
writes ``benchmarks/results/demo_peer.json`` and ``demo_peer.jpg`` (real, MuPD, U-Net rows).

    python benchmarks/demo_peer.py --images 45000 --threads 2

The U-Net sees the caption as the masked mean of its hashed-word tokens, added to the timestep
embedding (``class_embed_type="identity"``); a dropped caption is an all-false mask, as for MuPD.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
TIMES = (0.3, 0.5, 0.7)


class UNetPeer(nn.Module):
    """``model(x, t, {"text": (tokens, mask)})`` -> velocity, around a diffusers UNet2DModel."""

    def __init__(self, latent_channels: int, latent_size: int, text_width: int, width: int = 64):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
                                block_out_channels=(width, 2 * width), layers_per_block=1, norm_num_groups=16,
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                                attention_head_dim=32, class_embed_type="identity")
        self.text = nn.Linear(text_width, 4 * width)  # to the timestep embedding's width

    def forward(self, x, t, conditions=None):
        tokens, mask = (conditions or {}).get("text", (None, None))
        if tokens is None:
            pooled = torch.zeros(x.shape[0], self.text.in_features, device=x.device)
        else:
            m = mask.to(tokens.dtype).unsqueeze(-1)
            pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.unet(x, t * 1000.0, class_labels=self.text(pooled)).sample


def train(model, latents, labels, captions, *, images: int, seed: int, batch_size: int = 32, lr: float = 1e-3):
    """The demo's recipe as one plain loop; returns (EMA copy, stats)."""
    from mupd.flow import drop_conditions, flow_matching_loss
    from mupd.train.ema import EMA

    tokens, mask = captions
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(model, 0.995)
    losses, seen, start = [], 0, time.perf_counter()
    model.train()
    while seen < images:
        idx = torch.randint(len(latents), (batch_size,), generator=gen)
        conds = drop_conditions({"text": (tokens[labels[idx]], mask[labels[idx]])}, generator=gen)
        loss = flow_matching_loss(model, latents[idx], conds, generator=gen)
        for group in opt.param_groups:  # linear warm-up over the first 1024 images, as the demo preset
            group["lr"] = lr * min(1.0, (seen + batch_size) / 1024)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        losses.append(loss.item())
        seen += batch_size
    seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10):]
    return ema.module.eval(), {"images": seen, "seconds": round(seconds, 1), "images_per_s": round(seen / seconds, 1),
                               "loss_last_10pct": round(float(np.mean(tail)), 4)}


@torch.no_grad()
def denoising_error(model, latents, tokens, mask, seed: int) -> dict:
    """MSE of the model's clean-latent estimate ``x_t - t v`` for held-out latents noised to t."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in TIMES:
        noise = torch.randn(latents.shape, generator=gen)
        x_t = (1 - t) * latents + t * noise
        v = model(x_t, torch.full((len(latents),), t), {"text": (tokens, mask)})
        out[f"t={t}"] = round(float((x_t - t * v - latents).pow(2).mean()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=45_000, help="training images per network")
    parser.add_argument("--train-patches", type=int, default=3000)
    parser.add_argument("--eval-samples", type=int, default=200, help="generated patches per network (and held-out real ones)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "demo_peer.json"))
    args = parser.parse_args()

    from mupd.encoders import registry
    from mupd.settings import apply_threads
    from mupd.train.data import encode_pixels
    from mupd.train.demo import (DEMO_MODEL, DEMO_SAMPLER, PCAM_CAPTIONS, _latent_space, _prepare_data, generate, reconstruct,
                                 resolve_autoencoder)
    from mupd.train.demo_check import evaluate_generations, train_classifier
    from mupd.train.preview import labelled_grid
    from mupd.models import MuPD

    apply_threads(args.threads)
    torch.manual_seed(args.seed)
    d = _prepare_data(None, args.seed, 96, 5.0, args.train_patches, args.eval_samples)
    _, folder, _ = resolve_autoencoder("taef2")
    vae, _, latents = _latent_space("taef2", folder, d, torch.device("cpu"), float("inf"), args.seed, True)
    classes = d["classes"]
    labels = torch.tensor([classes.index(lab) for lab in d["labels"][:len(latents)]])
    text = registry.build("text", "hashed-words", width=64, max_length=16)
    tokens, mask = text.encode([PCAM_CAPTIONS[str(c)] for c in classes])
    held, held_labels = d["held_pixels"], np.array([classes.index(r.label) for r in d["held_recs"]])
    held_latents = encode_pixels(vae, held, batch_size=100, progress=False)
    C, H, W = latents.shape[1:]

    def mupd_model():
        return MuPD.from_preset("tiny", **DEMO_MODEL, input_size=H, in_channels=C, modalities=("text",), cond_dims={"text": text.width})

    networks = {"mupd": mupd_model, "diffusers-unet": lambda: UNetPeer(C, H, text.width)}
    sampler = dict(DEMO_SAMPLER)
    per_class = args.eval_samples // len(classes)
    results, rows = {}, [("real (held out)", np.asarray(held[:8].permute(0, 2, 3, 1)))]
    for name, build in networks.items():
        torch.manual_seed(args.seed)
        model = build()
        ema, stats = train(model, latents, labels, (tokens, mask), images=args.images, seed=args.seed)
        stats["parameters"] = sum(p.numel() for p in model.parameters())
        stats["denoising_mse"] = denoising_error(ema, held_latents, tokens[held_labels], mask[held_labels], args.seed)
        fakes, fake_labels = [], []
        for k in range(len(classes)):
            n = per_class
            fakes.append(generate(ema, vae, {"text": (tokens[k:k + 1].expand(n, -1, -1), mask[k:k + 1].expand(n, -1))}, n, (C, H, W),
                                  sampler, seed=args.seed + 1000 + 97 * k))
            fake_labels += [k] * n
        results[name] = (stats, np.concatenate(fakes), np.array(fake_labels))
        rows.append((f"{name}: {PCAM_CAPTIONS[str(classes[0])]}", fakes[0][:8]))
        rows.append((f"{name}: {PCAM_CAPTIONS[str(classes[-1])]}", fakes[-1][:8]))
        print(name, json.dumps(stats), flush=True)

    recon = torch.from_numpy(reconstruct(vae, held)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([classes.index(lab) for lab in d["labels"]])
    judge, _ = train_classifier(d["pixels"], y, seconds=float("inf"), max_steps=600, seed=args.seed, classes=len(classes))
    report = {}
    for name, (stats, fake, fake_labels) in results.items():
        ev = evaluate_generations(judge, real=held, real_labels=held_labels, fake=torch.from_numpy(fake).permute(0, 3, 1, 2).contiguous(),
                                  fake_labels=fake_labels, recon=recon)
        report[name] = {**stats, "class_recognition": ev["class_recognition"]["generated"],
                        "fid_generated": ev["generated_vs_real"]["fid"], "fid_reconstructions": ev["autoencoder_reconstructions_vs_real"]["fid"]}
    out = Path(args.out)
    grid = labelled_grid(rows, scale=2).convert("RGB")
    grid.save(out.with_suffix(".jpg"), quality=88)
    payload = {
        "what": "mupd demo's MuPD vs a diffusers UNet2DModel, same loop, latents, images and sampler (see the script's docstring)",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "images": args.images, "train_patches": int(len(latents)), "eval_samples": per_class * len(classes), "sampler": sampler,
        "networks": report,
        "mupd_vs_unet_images_per_s": round(report["mupd"]["images_per_s"] / report["diffusers-unet"]["images_per_s"], 2),
        "samples": out.with_suffix(".jpg").name,
    }
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
