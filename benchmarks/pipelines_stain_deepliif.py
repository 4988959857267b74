"""DeepLIIF stain fine-tune on a 2-core CPU: Ki67 IHC -> 3-channel multiplex IF (DAPI, Lap2, Ki67),
scored by marker Pearson on held-out tissue, against a linear colour baseline and the target
autoencoder's reconstruction ceiling. Writes ``benchmarks/results/pipelines_stain_deepliif.json``.

Honest set-up notes (also written into the JSON):
* DeepLIIF's ``Sample_Dataset/test/*.png`` hold the IHC panel six times (no registered mIF), so
  the held-out set is SPATIAL: the two registered training panels (Bladder1, Lung1) are split into
  a training band (top rows) and a test band (bottom rows) with a gap between them.
* Panels are downsampled 2x (512 -> 256 px) and the model is tiny; minutes of CPU, not a result
  about MuPD's quality. No pretrained base generator exists offline, so the fine-tune starts from
  a fresh tiny model with the source latents as extra input channels (same code path as a
  fine-tune: ``extra_in_channels``).

    python benchmarks/pipelines_stain_deepliif.py [--seconds 150]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TILE = 32        # model tile in pixels (latent 8x8 with a 4x autoencoder)
TRAIN_ROWS = 176  # rows [0, 176) of each 256-px panel train; rows [192, 256) are held out
TEST_FROM = 192


def panels(sample_data: Path):
    """(ihc (2,3,256,256) uint8, mif (2,3,256,256) uint8 = DAPI, Lap2, Ki67) from the registered panels."""
    from PIL import Image

    from mupd.data.stains import DEEPLIIF_PANELS, split_panels

    ihc, mif, names = [], [], []
    for f in sorted((sample_data / "stains/deepliif/Sample_Dataset/train").glob("*.png")):
        parts = dict(zip(DEEPLIIF_PANELS, split_panels(np.asarray(Image.open(f).convert("RGB")), 6, str(f))))
        half = lambda a: np.asarray(Image.fromarray(a).resize((256, 256), Image.Resampling.BOX))  # noqa: E731
        dapi = half(parts["dapi"]).mean(-1)
        lap2 = half(parts["lap2"])[..., 1]  # Lap2 is shown in green
        ki67 = half(parts["ki67_mif"]).mean(-1)
        ihc.append(half(parts["ihc"]).transpose(2, 0, 1))
        mif.append(np.stack([dapi, lap2, ki67]).round().astype(np.uint8))
        names.append(f.stem)
    return torch.from_numpy(np.stack(ihc)), torch.from_numpy(np.stack(mif)), names


def random_crops(ihc, mif, n, g):
    """Paired random 32-px crops from the training band, with flips / 90-degree turns."""
    k = torch.randint(0, ihc.shape[0], (n,), generator=g)
    ys = torch.randint(0, TRAIN_ROWS - TILE + 1, (n,), generator=g)
    xs = torch.randint(0, 256 - TILE + 1, (n,), generator=g)
    rot = torch.randint(0, 4, (n,), generator=g)
    src, tgt = [], []
    for i in range(n):
        a = ihc[k[i], :, ys[i]:ys[i] + TILE, xs[i]:xs[i] + TILE]
        b = mif[k[i], :, ys[i]:ys[i] + TILE, xs[i]:xs[i] + TILE]
        src.append(torch.rot90(a, int(rot[i]), (1, 2)))
        tgt.append(torch.rot90(b, int(rot[i]), (1, 2)))
    return torch.stack(src), torch.stack(tgt)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=150.0, help="model training budget")
    parser.add_argument("--vae-seconds", type=float, default=40.0, help="budget per autoencoder")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pipelines_stain_deepliif.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster (no spin-waiting)
    torch.manual_seed(0)

    from mupd import MuPD
    from mupd.bundle import save_bundle
    from mupd.flow import flow_matching_loss
    from mupd.metrics.stains import marker_correlation, pearson
    from mupd.pipelines import Pipeline
    from mupd.settings import sample_data_dir
    from mupd.encoders.vae import LatentAutoencoder
    from mupd.encoders.vae_train import fit_autoencoder
    from mupd.train.ema import EMA

    data = sample_data_dir()
    if data is None:
        print("sample data not found (set MUPD_SAMPLE_DATA)", file=sys.stderr)
        return 1
    ihc, mif, names = panels(data)
    g = torch.Generator().manual_seed(0)
    pool_src, pool_tgt = random_crops(ihc, mif, 2048, g)
    t0 = time.perf_counter()
    # small autoencoders and batches: more optimiser steps in a CPU budget matter more than width here
    def autoencoder(pixels, seed):
        ae = LatentAutoencoder.tiny(block_out_channels=(16, 32, 32), sample_size=pixels.shape[-1], norm_num_groups=8, seed=seed)
        scaled = pixels.float() / 127.5 - 1
        fit_autoencoder(ae, scaled, seconds=args.vae_seconds, batch_size=16, lr=2e-3, crop=32, seed=seed, progress=False)
        ae.fit_latent_stats(scaled[:1024].split(64))
        return ae

    source_vae, target_vae = autoencoder(pool_src, 0), autoencoder(pool_tgt, 1)
    vae_seconds = time.perf_counter() - t0
    with torch.no_grad():
        src_lat = torch.cat([source_vae.encode(c.float() / 127.5 - 1) for c in pool_src.split(256)])
        tgt_lat = torch.cat([target_vae.encode(c.float() / 127.5 - 1) for c in pool_tgt.split(256)])

    model = MuPD.from_preset("tiny", modalities=("text",), input_size=src_lat.shape[-1], depth=4, hidden_size=128,
                             num_heads=4, extra_in_channels=src_lat.shape[1])
    ema = EMA(model, 0.995)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0, step, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < args.seconds:
        idx = torch.randint(0, len(src_lat), (32,), generator=g)
        loss = flow_matching_loss(model, tgt_lat[idx], {}, extra_input=src_lat[idx], time_sampling="logit_normal", generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        losses.append(float(loss.detach()))
        step += 1
    train_seconds = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(Path(tmp) / "stain", model=model, ema=ema.module, vae=target_vae, source_vae=source_vae,
                    extra={"task": "stain", "image_size": TILE, "source_channels": src_lat.shape[1]})
        pipe = Pipeline.from_pretrained(Path(tmp) / "stain", device="cpu")
        from PIL import Image

        t0 = time.perf_counter()
        pred_readout, pred_sample = [], []
        for k in range(len(names)):
            region = Image.fromarray(ihc[k, :, TEST_FROM:].permute(1, 2, 0).numpy())
            out = pipe.stain(region, method="readout", overlap=8, output_type="np")
            pred_readout.append((out.images[0] * 255).round().astype(np.uint8))
            out = pipe.stain(region, method="sample", steps=10, overlap=8, seed=k, output_type="np")
            pred_sample.append((out.images[0] * 255).round().astype(np.uint8))
        infer_seconds = time.perf_counter() - t0

    real = mif[:, :, TEST_FROM:].permute(0, 2, 3, 1).numpy()  # (2, 64, 256, 3)
    src_test = ihc[:, :, TEST_FROM:].permute(0, 2, 3, 1).numpy().reshape(-1, 3).astype(np.float64)
    # baseline: per-marker linear regression from IHC RGB, fitted on the training band
    src_train = ihc[:, :, :TRAIN_ROWS].permute(0, 2, 3, 1).numpy().reshape(-1, 3).astype(np.float64)
    tgt_train = mif[:, :, :TRAIN_ROWS].permute(0, 2, 3, 1).numpy().reshape(-1, 3).astype(np.float64)
    design = lambda x: np.c_[x, np.ones(len(x))]  # noqa: E731
    coef, *_ = np.linalg.lstsq(design(src_train), tgt_train, rcond=None)
    linear = np.clip(design(src_test) @ coef, 0, 255).reshape(real.shape).round().astype(np.uint8)
    with torch.no_grad():  # ceiling: the target autoencoder's own reconstruction of the real mIF
        x = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 127.5 - 1
        recon = ((target_vae.decode(target_vae.encode(x)) + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()

    def blocks(a):  # 16x16 blocks as patches: (2, 64, 256, 3) -> (2*4*16, 16, 16, 3)
        n, h, w, c = a.shape
        return a.reshape(n, h // 16, 16, w // 16, 16, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 16, 16, c)

    slides = np.repeat(np.arange(len(names)), (real.shape[1] // 16) * (real.shape[2] // 16))
    results = {}
    for label, pred in (("mupd_readout", np.stack(pred_readout)), ("mupd_sample_10_heun", np.stack(pred_sample)),
                        ("linear_colour_baseline", linear), ("target_vae_reconstruction_ceiling", recon)):
        per = {}
        for c, marker in enumerate(("DAPI", "Lap2", "Ki67")):
            mc = marker_correlation(blocks(pred), blocks(real), channel=c, slides=slides, n_resamples=200)
            mc["region_pixel_pearson"] = float(np.mean([pearson(pred[k, ..., c], real[k, ..., c]) for k in range(len(names))]))
            per[marker] = mc
        results[label] = per
    report = {
        "task": "DeepLIIF Ki67 IHC -> mIF (DAPI, Lap2, Ki67), tiled read-out / sampling",
        "hardware": f"2-core CPU shared with other jobs, 1 torch thread ({platform.machine()}), torch {torch.__version__}",
        "split": f"spatial: rows [0,{TRAIN_ROWS}) train, [{TEST_FROM},256) test, of panels {names} at 256 px "
                 "(the Sample_Dataset test images carry no registered mIF: all six panels are the IHC)",
        "model": {"preset": "tiny, depth 4, width 128", "parameters": model.num_parameters(), "steps": step,
                  "batch": 32, "train_seconds": round(train_seconds, 1), "final_loss_mean_last_50": float(np.mean(losses[-50:]))},
        "autoencoders_seconds": round(vae_seconds, 1),
        "autoencoder_steps": {"source": source_ae.steps, "target": target_ae.steps, "batch": 16, "blocks": [16, 32, 32]},
        "inference_seconds": round(infer_seconds, 1),
        "tiles": {"tile": TILE, "overlap": 8},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for label, per in results.items():
        print(label, {m: round(v["region_pixel_pearson"], 3) for m, v in per.items()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
