"""mupd on a LazySlide ``WSIData``, in the style of ``lazyslide.tl`` (``pip install 'mupd[lazyslide]'``).

LazySlide does what it already does (tissue detection, tiling, reading tiles); mupd stains them:

    import lazyslide as zs, wsidata
    from mupd.integrations.lazyslide import generate_tiles, impute_tiles, stain_tiles
    wsi = wsidata.open_wsi("slide.svs")
    zs.pp.find_tissues(wsi)
    zs.pp.tile_tissues(wsi, tile_px=64, mpp=2.0)
    stain_tiles(wsi, "runs/he-to-ihc/checkpoint")        # -> wsi.images["mupd_stain_image"], wsi["mupd_stain_tiles"]
    zs.pl.tiles(wsi, feature_key="mupd_stain", color="channel_0")
    impute_tiles(wsi, "runs/impute-her2st")             # -> wsi["mupd_impute_tiles"] (tiles x genes)
    zs.pl.tiles(wsi, feature_key="mupd_impute", color="ERBB2")
    generate_tiles(wsi, "runs/her2st/checkpoint", "mupd_impute_tiles")   # -> wsi.images["mupd_generate_image"]

``stain_tiles`` writes the stained tiles as a new image layer ``<key>_image`` (stitched at the tiles' resolution and
placed on the slide by a scale transform, so it overlays the slide in the 'global' coordinate
system) and a per-tile table ``<key>_<tile_key>`` of the stained channels' mean intensities (an AnnData annotating the
tiles, the layout of ``lazyslide.tl.feature_extraction``), which LazySlide and scanpy plot.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..errors import missing_extra, require


def _pipeline(pipe):
    if isinstance(pipe, (str, os.PathLike)):
        from ..pipelines import Pipeline

        return Pipeline.from_pretrained(pipe)
    return pipe


def stain_tiles(wsi, pipe, *, tile_key: str = "tiles", key_added: str = "mupd_stain", method: str | None = None,
                steps: int = 20, sampler: str = "heun", seed: int = 0, text: str | None = None,
                progress: bool = True) -> str:
    """Virtual-stain every tile of ``wsi[tile_key]`` (from ``lazyslide.pp.tile_tissues``) with a stain
    or translate pipeline folder (or loaded ``Pipeline``); returns ``key_added``.

    Tiles are read by wsidata at the tile spec's resolution; a tile larger than the model's tile is
    processed by the pipelines' seamless overlapping tiling. Tile i uses seed ``seed + i``."""
    try:
        from PIL import Image
        from tqdm.auto import tqdm
        from wsidata.io import add_features
    except ImportError as exc:
        raise missing_extra(exc.name or "lazyslide", "lazyslide", "mupd on a WSIData") from None
    require(tile_key in wsi.shapes, f"the WSIData has no tiles '{tile_key}' (it has {list(wsi.shapes)}); "
                                    "run lazyslide.pp.find_tissues and lazyslide.pp.tile_tissues first")
    pipe = _pipeline(pipe)
    require(pipe.source_channels > 0 or pipe.task == "generate",
            f"{pipe.path} is not a stain/translate model")
    if pipe.source_channels > 0:
        method = method or "readout"
        run = pipe.translate if pipe.task == "translate" else pipe.stain
    else:  # a target-domain generator: the unpaired translate recipe (SDEdit)
        method = method or "sdedit"
        run = pipe.translate
    placed, means, ids = [], [], []
    tiles = wsi.iter.tile_images(tile_key)
    for i, tile in enumerate(tqdm(tiles, total=len(wsi[tile_key]), desc="mupd stain", unit="tile", disable=not progress)):
        out = run(Image.fromarray(np.ascontiguousarray(tile.image[..., :3])), method=method, steps=steps,
                  sampler=sampler, seed=seed + i, text=text, output_type="np")
        pixels = np.asarray(out.images[0], dtype=np.float32)  # (h, w, C) in [0, 1]
        placed.append((tile.x, tile.y, float(tile.downsample), pixels))
        means.append(pixels.reshape(-1, pixels.shape[-1]).mean(axis=0))
        ids.append(tile.id)
    require(placed, f"'{tile_key}' holds no tiles; check the tissue detection and tiling")
    wsi.images[f"{key_added}_image"] = _layer(wsi, placed)
    by_id = dict(zip(ids, means))  # rows in the order of the tiles table, which the features annotate
    features = np.stack([by_id[t] for t in wsi[tile_key]["tile_id"].tolist()]).astype(np.float32)
    add_features(wsi, key=f"{key_added}_{tile_key}", tile_key=tile_key, features=features)
    table = wsi.tables[f"{key_added}_{tile_key}"]
    table.var_names = [f"channel_{c}" for c in range(features.shape[1])]
    table.uns["mupd"] = {"model": str(pipe.path), "method": method, "steps": steps, "sampler": sampler, "seed": seed}
    return key_added


def impute_tiles(wsi, model, *, tile_key: str = "tiles", key_added: str = "mupd_impute", progress: bool = True) -> str:
    """Predict expression for every tile of ``wsi[tile_key]`` with a ``mupd impute train`` model folder
    (or loaded ``SpotModel``); writes the table ``<key_added>_<tile_key>`` (tiles x genes, log1p-CPM),
    so ``lazyslide.pl.tiles(wsi, feature_key=key_added, color="ERBB2")`` maps a gene and scanpy reads
    it as an AnnData. Tiles are resized to the model's crop size (bicubic), as its training crops were."""
    try:
        from PIL import Image
        from tqdm.auto import tqdm
        from wsidata.io import add_features
    except ImportError as exc:
        raise missing_extra(exc.name or "lazyslide", "lazyslide", "mupd on a WSIData") from None
    from ..impute.model import SpotModel

    require(tile_key in wsi.shapes, f"the WSIData has no tiles '{tile_key}' (it has {list(wsi.shapes)}); "
                                    "run lazyslide.pp.find_tissues and lazyslide.pp.tile_tissues first")
    model = SpotModel.load(model) if isinstance(model, (str, os.PathLike)) else model
    side = int(model.config["image_size"])
    crops, ids = [], []
    for tile in tqdm(wsi.iter.tile_images(tile_key), total=len(wsi[tile_key]), desc="mupd impute", unit="tile",
                     disable=not progress):
        image = Image.fromarray(np.ascontiguousarray(tile.image[..., :3]))
        crops.append(np.asarray(image.resize((side, side), Image.Resampling.BICUBIC) if image.size != (side, side) else image))
        ids.append(tile.id)
    require(crops, f"'{tile_key}' holds no tiles; check the tissue detection and tiling")
    predicted = np.asarray(model.predict(np.stack(crops)), dtype=np.float32)
    by_id = dict(zip(ids, predicted))
    features = np.stack([by_id[t] for t in wsi[tile_key]["tile_id"].tolist()])
    add_features(wsi, key=f"{key_added}_{tile_key}", tile_key=tile_key, features=features)
    table = wsi.tables[f"{key_added}_{tile_key}"]
    table.var_names = [str(g) for g in model.genes]
    table.uns["mupd"] = {"method": model.method, "values": "log1p_cpm",
                         "train_sections": model.config.get("train_sections")}
    return key_added


def _layer(wsi, placed: list):
    """Tiles ``(x, y, downsample, (h, w, C) pixels in [0, 1])`` (x, y at level 0) -> one image layer at the
    tiles' resolution, placed on the slide by a scale transform; overlapping tiles are averaged."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    height, width = (int(v) for v in wsi.properties.shape)
    scale = placed[0][2]
    channels = placed[0][3].shape[-1]
    canvas = np.zeros((channels, math.ceil(height / scale), math.ceil(width / scale)), np.float32)
    weights = np.zeros(canvas.shape[1:], np.float32)
    for x, y, _, pixels in placed:
        y0, x0 = int(round(y / scale)), int(round(x / scale))
        h = max(0, min(pixels.shape[0], canvas.shape[1] - y0))
        w = max(0, min(pixels.shape[1], canvas.shape[2] - x0))
        canvas[:, y0:y0 + h, x0:x0 + w] += pixels[:h, :w].transpose(2, 0, 1)
        weights[y0:y0 + h, x0:x0 + w] += 1.0
    stitched = np.where(weights > 0, canvas / np.maximum(weights, 1.0), 0.0)
    layer = (stitched * 255.0).round().clip(0, 255).astype(np.uint8)
    return Image2DModel.parse(layer, dims=("c", "y", "x"), transformations={"global": Scale([scale, scale], axes=("y", "x"))})


def generate_tiles(wsi, pipe, table_key: str, *, tile_key: str = "tiles", key_added: str = "mupd_generate",
                   text: str | None = None, steps: int = 30, sampler: str = "heun", guidance=None, seed: int = 0,
                   progress: bool = True) -> str:
    """Generate one H&E tile per row of the expression table ``wsi[table_key]`` (tiles x genes, e.g.
    ``impute_tiles``' output or measured spots joined to the tiles) with a generate pipeline that has
    an RNA stream; the genes are mapped through the model's vocabulary. Writes the image layer
    ``<key_added>_image`` where each tile lies on the slide (tile i: seed ``seed + i``)."""
    import pandas as pd
    from tqdm.auto import tqdm

    require(table_key in wsi.tables, f"the WSIData has no table '{table_key}' (it has {list(wsi.tables)})")
    require(tile_key in wsi.shapes, f"the WSIData has no tiles '{tile_key}' (it has {list(wsi.shapes)})")
    pipe = _pipeline(pipe)
    table = wsi.tables[table_key]
    require("tile_id" in table.obs, f"table '{table_key}' does not annotate tiles (no obs['tile_id'])")
    bounds = wsi[tile_key].set_index("tile_id").geometry.bounds  # minx, miny, maxx, maxy at level 0
    values = table.X.toarray() if hasattr(table.X, "toarray") else np.asarray(table.X)
    genes = [str(g) for g in table.var_names]
    placed = []
    for i, tile_id in enumerate(tqdm(table.obs["tile_id"].tolist(), desc="mupd generate", unit="tile", disable=not progress)):
        profile = pd.Series(values[i], index=genes, name=f"{table_key}:{tile_id}")
        out = pipe(text=text, rna=profile, n=1, steps=steps, sampler=sampler, guidance=guidance, seed=seed + i,
                   output_type="np")
        pixels = np.asarray(out.images[0], dtype=np.float32)
        x0, y0, x1, _ = bounds.loc[tile_id]
        placed.append((x0, y0, (x1 - x0) / pixels.shape[1], pixels))
    require(placed, f"table '{table_key}' has no rows")
    wsi.images[f"{key_added}_image"] = _layer(wsi, placed)
    return key_added
