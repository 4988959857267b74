"""Data-layer throughput on the CPU, as ratios against plain peers run in the same process.

- tiling: ``mupd.data.wsi.read_tiles`` over a planned grid (1 um/px, 256 px) vs a plain OpenSlide
  ``read_region`` + resize loop over the same coordinates (ratio = ours / plain; ~1.0 means the
  wrapper adds nothing). Tissue detection and the whole ``tile_slides`` job (PNG writing) are
  timed separately.
- encode: ``mupd.data.encode.encode_dataset`` (image reading, VAE encode, shard writing) vs a
  plain ``diffusers.AutoencoderKL.encode`` loop over the same already-decoded batch (the peer does
  no I/O, so the ratio shows what reading + writing + standardising cost on top of the VAE).

    python benchmarks/data.py --out benchmarks/results/data_cpu.json [--patches 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_tiling(slide_path: Path, repeats: int, workdir: Path) -> dict:
    from PIL import Image

    from mupd.data.tiling import tile_slides
    from mupd.data.wsi import open_slide, plan_tiles, read_tiles, tissue_mask

    slide = open_slide(slide_path)
    t_mask = best_of(lambda: tissue_mask(slide), repeats)
    grid = plan_tiles(slide, mpp=1.0, size=256, min_tissue=0.0, name=slide_path.name)
    n = len(grid)

    def ours():
        for _ in read_tiles(slide, grid):
            pass

    def plain():
        for x, y in grid.coords:
            tile = slide.read_region((int(x), int(y)), grid.level, (grid.read_size, grid.read_size)).convert("RGB")
            tile.resize((grid.size, grid.size), Image.BICUBIC)

    t_plain = best_of(plain, repeats)
    t_ours = best_of(ours, repeats)
    t0 = time.perf_counter()
    _, records = tile_slides(slide_path, workdir / "tiles", mpp=1.0, size=256, progress=False)
    t_job = time.perf_counter() - t0
    return {"slide": slide_path.name, "tiles_all_grid": n, "read_size": grid.read_size, "size": 256, "mpp": 1.0,
            "plain_openslide_patches_per_s": n / t_plain, "mupd_read_tiles_patches_per_s": n / t_ours,
            "ratio_mupd_over_plain": t_plain / t_ours, "tissue_mask_s": t_mask,
            "tile_job_tissue_tiles": len(records), "tile_job_patches_per_s": len(records) / t_job}


def bench_encode(pcam: Path, patches: int, repeats: int, workdir: Path) -> dict:
    from mupd.data import patch_folder
    from mupd.data.encode import EncodeJob, encode_dataset
    from mupd.data.images import to_tensor
    from mupd.encoders.vae import LatentAutoencoder

    ae = LatentAutoencoder.tiny(block_out_channels=(32, 64, 64, 64))  # 8x down, like SD-VAE, narrower
    ae.save_pretrained(workdir / "vae")
    records = patch_folder(pcam, limit_per_class=patches // 2)
    images = to_tensor([r.image for r in records])
    vae = ae.vae

    @torch.no_grad()
    def plain():
        for chunk in images.split(32):
            vae.encode(chunk).latent_dist.mean

    runs = iter(range(100))

    def ours():
        job = EncodeJob(str(pcam), str(workdir / "vae"), str(workdir / f"shards{next(runs)}"), shard_size=32,
                        batch_size=32, limit=patches // 2)
        encode_dataset(job, progress=False)

    t_plain = best_of(plain, repeats)
    t_ours = best_of(ours, repeats)
    return {"patches": len(records), "image_size": 96, "vae": "AutoencoderKL (32,64,64,64), 8x down, random init",
            "plain_diffusers_encode_patches_per_s": len(records) / t_plain,
            "mupd_encode_job_patches_per_s": len(records) / t_ours, "ratio_mupd_over_plain": t_plain / t_ours}


def main() -> None:
    from mupd.settings import sample_data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = sample_data_dir()
    if data is None:
        raise SystemExit("sample data not found: set MUPD_SAMPLE_DATA")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {
            "hardware": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch threads {args.threads}",
            "torch": torch.__version__, "python": platform.python_version(),
            "note": "best of --repeats; the machine may have been shared, compare ratios not absolute numbers",
            "tiling": bench_tiling(data / "wsi" / "cmu_small_region.svs", args.repeats, work),
            "encode": bench_encode(data / "pcam" / "train", args.patches, args.repeats, work),
            "load_avg_1min_at_end": os.getloadavg()[0],
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
