"""A miniature her2st folder cut from the real one, once per session: sections B4 (patient B) and
C5 (patient C), the 48 spots nearest each section's centre, the H&E cropped around them (coordinates
shifted accordingly), the 1,500 genes with the most counts. Real tissue and real counts, small enough
that every impute test reads it in well under a second."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

MINI_SECTIONS = ("B4", "C5")
N_SPOTS, N_GENES, MARGIN = 48, 1500, 160


def _cut_section(src, dst, section, genes=None):
    counts = pd.read_csv(next((src / "ST-cnts").glob(f"{section}.tsv*")), sep="\t", index_col=0)
    spots = pd.read_csv(src / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    spots = spots.loc[[i for i in spots.index if i in counts.index]]
    xy = spots[["pixel_x", "pixel_y"]].to_numpy(float)
    centre = np.median(xy, 0)
    spots = spots.iloc[np.argsort(((xy - centre) ** 2).sum(1), kind="stable")[:N_SPOTS]]
    x0 = int(spots["pixel_x"].min()) - MARGIN
    y0 = int(spots["pixel_y"].min()) - MARGIN
    x1 = int(spots["pixel_x"].max()) + MARGIN
    y1 = int(spots["pixel_y"].max()) + MARGIN
    picture = next((src / "ST-imgs" / section).glob("*.jpg"))
    with warnings.catch_warnings():  # the real H&E is ~92 Mpx, above PIL's bomb warning limit
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(picture) as im:
            crop = im.convert("RGB").crop((x0, y0, x1, y1))
    (dst / "ST-imgs" / section).mkdir(parents=True)
    crop.save(dst / "ST-imgs" / section / f"{section}.jpg", quality=92)
    spots = spots.copy()
    spots["pixel_x"] -= x0
    spots["pixel_y"] -= y0
    spots.drop(columns=[c for c in spots.columns if c not in ("x", "y", "pixel_x", "pixel_y", "selected")]).to_csv(
        dst / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t", index=False)
    counts = counts.loc[spots.index]
    if genes is None:
        genes = counts.sum(0).sort_values(ascending=False, kind="stable").index[:N_GENES].tolist()
    counts.reindex(columns=genes, fill_value=0).to_csv(dst / "ST-cnts" / f"{section}.tsv.gz", sep="\t")
    return genes


@pytest.fixture(scope="session")
def mini_her2st(sample_data, tmp_path_factory):
    src = sample_data / "her2st"
    if not (src / "ST-imgs" / "B4").is_dir():
        pytest.skip("her2st sample data with images not found")
    dst = tmp_path_factory.mktemp("mini_her2st")
    (dst / "ST-cnts").mkdir()
    (dst / "ST-spotfiles").mkdir()
    genes = None
    for section in MINI_SECTIONS:
        genes = _cut_section(src, dst, section, genes)
    return dst


@pytest.fixture(scope="session")
def mini_table(mini_her2st):
    from mupd.data.spatial import load_her2st

    return load_her2st(mini_her2st, crop=224, size=32)


@pytest.fixture(scope="session")
def her2st_generator(mini_her2st, sample_data, tmp_path_factory):
    """A tiny RNA-conditioned generator built with the steps of ``mupd demo --dataset her2st`` (its
    data loader, autoencoder, trainer and pipeline folder) on the miniature folder: B4 -> held-out C5,
    12 spots a section, 96 training images, no captions. Returns its ``checkpoint/`` pipeline folder."""
    import shutil

    import torch

    from mupd.train import demo_her2st
    from mupd.train.data import encode_pixels

    base = tmp_path_factory.mktemp("her2st-generator")
    (base / "her2st").symlink_to(mini_her2st, target_is_directory=True)
    genesets = sample_data / demo_her2st.GENESETS
    if not genesets.exists():
        pytest.skip(f"{genesets} not found")
    (base / demo_her2st.GENESETS).parent.mkdir(parents=True)
    shutil.copy(genesets, base / demo_her2st.GENESETS)
    data = demo_her2st.load_data(base / "her2st", max_spots=12, captions=False, sections=(("B4",), ("C5",)))
    vae, _ = demo_her2st.autoencoder(data.pixels[data.train], seconds=1.0, seed=0, progress=False)
    latents = encode_pixels(vae, data.pixels, progress=False)
    torch.manual_seed(0)
    trainer, _ = demo_her2st.fit_model(data, vae, latents, base / "run", seed=0, total_images=96, text=False, progress=False)
    return trainer.checkpoint_dir
