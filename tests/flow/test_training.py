"""End to end on real tissue: a tiny MuPD trained by flow matching on 8x8 downsampled PCam patches
(used directly as 3-channel "latents") lowers its loss and its ODE samples match the data's
per-channel statistics."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mupd import MuPD
from mupd.flow import drop_conditions, flow_matching_loss, sample
from mupd.train.ema import EMA


def load_pcam(root, per_class: int = 256, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label in (0, 1):
        files = sorted((root / "pcam" / "train" / str(label)).glob("*.jpg"))[:per_class]
        for f in files:
            im = Image.open(f).convert("RGB").resize((size, size), Image.BOX)
            images.append(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
            labels.append(label)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def test_tiny_model_learns_pcam_statistics(sample_data):
    data, labels = load_pcam(sample_data)
    assert data.shape == (512, 3, 8, 8)
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    torch.manual_seed(0)
    model = MuPD.from_preset("tiny", in_channels=3, modalities=("text",), cond_dims={"text": 2})
    ema = EMA(model, decay=0.99, warmup=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(300):
        idx = torch.randint(0, len(data), (64,), generator=g)
        conditions = drop_conditions({"text": onehot[idx]}, generator=g)
        loss = flow_matching_loss(model, data[idx], conditions, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
        losses.append(loss.item())
    first, last = np.mean(losses[:20]), np.mean(losses[-50:])
    assert last < 0.6 * first, (first, last)

    z = torch.randn(512, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    generated = sample(ema.module, z, {"text": onehot}, method="heun", steps=10)
    real_mean, real_std = data.mean(dim=(0, 2, 3)), data.std(dim=(0, 2, 3))
    gen_mean, gen_std = generated.mean(dim=(0, 2, 3)), generated.std(dim=(0, 2, 3))
    # noise has mean 0 / std 1 per channel; PCam (in [-1, 1]) has e.g. mean ~0.4, std ~0.3
    assert (real_mean - 0).abs().max() > 0.2 and (real_std - 1).abs().max() > 0.4
    assert (gen_mean - real_mean).abs().max() < 0.1, (gen_mean, real_mean)
    assert ((gen_std / real_std) - 1).abs().max() < 0.25, (gen_std, real_std)


def test_per_sample_loss_with_given_draws_is_what_the_trainer_optimises():
    """The trainer passes its global-batch draws (t, noise, CLS noise) and takes per-sample losses;
    their mean is the default loss, and each row is the velocity MSE (+ weighted CLS MSE) by hand."""
    torch.manual_seed(0)
    model = MuPD.from_preset("tiny", input_size=8, in_channels=4, modalities=(), cond_dims={}, cls_dim=6)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    cls, cls_noise = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    kw = dict(t=t, noise=noise, cls=cls, cls_noise=cls_noise, cls_weight=0.5)
    per_sample, extras = flow_matching_loss(model, x0, None, reduction="none", return_extras=True, **kw)
    assert per_sample.shape == (3,) and extras["loss_v"].shape == (3,)
    te = t[:, None, None, None]
    v, out = model((1 - te) * x0 + te * noise, t, None, cls=(1 - t[:, None]) * cls + t[:, None] * cls_noise, return_extras=True)
    by_hand = (v - (noise - x0)).pow(2).mean((1, 2, 3)) + 0.5 * (out["cls_v"] - (cls_noise - cls)).pow(2).mean(1)
    torch.testing.assert_close(per_sample, by_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flow_matching_loss(model, x0, None, **kw), per_sample.mean(), rtol=1e-5, atol=1e-6)
