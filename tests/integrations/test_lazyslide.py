"""mupd on a real slide through LazySlide/wsidata (skipped unless the 'lazyslide' extra is installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lazyslide")
pytest.importorskip("wsidata")


def _helpers():
    path = Path(__file__).parents[1] / "pipelines" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_pipelines_conftest_ls", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stain_folder(tmp_path_factory):
    from mupd import MuPD
    from mupd.bundle import save_bundle

    helpers = _helpers()
    torch.manual_seed(1)
    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 32}, input_size=8, extra_in_channels=4)
    helpers._randomise_gates(model)
    folder = tmp_path_factory.mktemp("ls") / "he-to-ihc"
    save_bundle(folder, model=model, vae=helpers.tiny_vae(seed=2), source_vae=helpers.tiny_vae(seed=3),
                encoders={"text": ("hashed-words", {"width": 32}, None)},
                extra={"task": "stain", "image_size": helpers.IMAGE_SIZE, "source_channels": 4})
    return folder


def test_stain_tiles_of_a_real_slide_into_an_image_layer_and_a_tile_table(sample_data, stain_folder):
    import lazyslide as zs
    import wsidata
    from PIL import Image

    from mupd.integrations.lazyslide import stain_tiles
    from mupd.pipelines import Pipeline

    wsi = wsidata.open_wsi(str(sample_data / "wsi" / "cmu_small_region.svs"))
    zs.pp.find_tissues(wsi)  # LazySlide's own tissue detection and tiling
    zs.pp.tile_tissues(wsi, tile_px=64, mpp=2.0)
    pipe = Pipeline.from_pretrained(stain_folder, device="cpu")
    assert stain_tiles(wsi, pipe, progress=False) == "mupd_stain"
    layer = wsi.images["mupd_stain_image"]
    height, width = wsi.properties.shape
    assert layer.shape == (3, -(-height // 4), -(-width // 4))  # tiles at 2 mpp on a ~0.5 mpp slide: 1/4
    table = wsi["mupd_stain_tiles"]
    assert table.n_obs == len(wsi["tiles"]) and list(table.var_names) == ["channel_0", "channel_1", "channel_2"]
    # tile 0 in the layer is exactly pipe.stain on that tile read by wsidata (seed + 0)
    first = next(iter(wsi.iter.tile_images("tiles")))
    direct = pipe.stain(Image.fromarray(first.image), method="readout", steps=20, seed=0, output_type="np").images[0]
    y, x = round(first.y / 4), round(first.x / 4)
    placed = np.asarray(layer[:, y:y + 64, x:x + 64]).transpose(1, 2, 0)
    assert np.abs(placed.astype(int) - np.round(direct * 255).astype(int)).max() <= 1
    assert np.allclose(table.X[0], direct.reshape(-1, 3).mean(0), atol=1e-5)
    outside = np.asarray(layer[:, :8, :8])  # a corner with no tissue tile stays empty
    assert outside.max() == 0


def test_impute_tiles_into_a_table_lazyslide_plots(sample_data, mini_table, tmp_path):
    import lazyslide as zs
    import matplotlib

    matplotlib.use("Agg")
    import wsidata
    from PIL import Image

    from mupd.impute import runner
    from mupd.impute.model import SpotModel
    from mupd.integrations.lazyslide import impute_tiles

    settings = runner.RunSettings(image_size=32, n_components=8)
    model = SpotModel.fit("pixels-ridge", mini_table, n_genes=12, settings=settings)  # real her2st spots
    folder = model.save(tmp_path / "impute")
    wsi = wsidata.open_wsi(str(sample_data / "wsi" / "cmu_small_region.svs"))
    zs.pp.find_tissues(wsi)
    zs.pp.tile_tissues(wsi, tile_px=64, mpp=2.0)
    assert impute_tiles(wsi, folder, progress=False) == "mupd_impute"
    table = wsi["mupd_impute_tiles"]
    assert table.shape == (len(wsi["tiles"]), 12) and list(table.var_names) == list(model.genes)
    first = next(iter(wsi.iter.tile_images("tiles")))
    crop = np.asarray(Image.fromarray(first.image).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(table.X[0], model.predict(crop[None])[0], rtol=1e-5, atol=1e-5)
    assert table.X.std(0).max() > 0  # tiles differ, so the map shows something
    zs.pl.tiles(wsi, feature_key="mupd_impute", color=model.genes[0])  # LazySlide plots it


def test_generate_tiles_from_each_tiles_expression(sample_data, mini_table, tmp_path):
    import lazyslide as zs
    import pandas as pd
    import wsidata

    from mupd import MuPD
    from mupd.bundle import save_bundle
    from mupd.data.expression import GeneVocabulary
    from mupd.impute import runner
    from mupd.impute.model import SpotModel
    from mupd.integrations.lazyslide import generate_tiles, impute_tiles
    from mupd.pipelines import Pipeline

    helpers = _helpers()
    impute = SpotModel.fit("pixels-ridge", mini_table, n_genes=12, settings=runner.RunSettings(image_size=32, n_components=8))
    wsi = wsidata.open_wsi(str(sample_data / "wsi" / "cmu_small_region.svs"))
    zs.pp.find_tissues(wsi)
    zs.pp.tile_tissues(wsi, tile_px=64, mpp=2.0)
    impute_tiles(wsi, impute, progress=False)
    table = wsi["mupd_impute_tiles"]
    # a generator whose gene vocabulary is the imputed panel (fitted on the predictions, as values)
    vocab = GeneVocabulary.fit(np.asarray(table.X, np.float64), list(table.var_names), normalisation="none")
    torch.manual_seed(0)
    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 32}, vector_modalities={"rna": 12}, input_size=8)
    helpers._randomise_gates(model)
    folder = save_bundle(tmp_path / "gen", model=model, vae=helpers.tiny_vae(), vocabulary=vocab,
                         encoders={"text": ("hashed-words", {"width": 32}, None)}, extra={"image_size": 32})
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert generate_tiles(wsi, pipe, "mupd_impute_tiles", steps=2, progress=False) == "mupd_generate"
    layer = np.asarray(wsi.images["mupd_generate_image"])
    height, width = wsi.properties.shape
    assert layer.shape == (3, -(-height // 8), -(-width // 8))  # 32 px outputs for 256 px (level-0) tiles
    x0, y0, _, _ = wsi["tiles"].set_index("tile_id").geometry.bounds.loc[int(table.obs["tile_id"].iloc[0])]
    direct = pipe(rna=pd.Series(np.asarray(table.X)[0], index=list(table.var_names)), n=1, steps=2, seed=0,
                  output_type="np").images[0]
    y, x = round(y0 / 8), round(x0 / 8)
    placed = layer[:, y:y + 32, x:x + 32].transpose(1, 2, 0).astype(int)
    assert np.abs(placed - np.round(direct * 255).astype(int)).max() <= 1
