"""Slide bags from ``mupd data encode`` output: real her2st spot crops tiled into pseudo-slides,
written as a ``mupd data tile``-style manifest (id, path, slide_id, x, y), encoded to shards with a
tiny ViT; the bags equal the masked token means of each slide's tiles, and the MIL CLI trains and
predicts from the shard folder."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from mupd.cli import main


@pytest.fixture(scope="module")
def encoded(mini_table, tmp_path_factory, tiny_vit_dir):
    import shutil

    from mupd.data.encode import EncodeJob, encode_dataset
    from mupd.data.records import Record, write_manifest
    from mupd.encoders.vae import LatentAutoencoder

    root = tmp_path_factory.mktemp("encoded")
    LatentAutoencoder.tiny().save_pretrained(root / "vae")
    shutil.copytree(tiny_vit_dir, root / "vit")
    records, bulk = [], {}
    sections = np.asarray(mini_table.section)
    for section in ("B4", "C5"):  # 4 pseudo-slides per section: strips of 12 neighbouring spots
        rows = np.where(sections == section)[0]
        rows = rows[np.argsort(mini_table.coords[rows, 0], kind="stable")]
        for k, strip in enumerate(np.array_split(rows, 4)):
            slide = f"{section}-s{k}.tif"
            bulk[slide] = mini_table.counts[strip].sum(0)
            for i in strip:
                x, y = (int(v) for v in mini_table.coords[i])
                records.append(Record(f"{slide[:-4]}_{x}_{y}", mini_table.images[i], meta={"slide_id": slide, "x": x, "y": y}))
    manifest = write_manifest(records, root / "tiles" / "manifest.csv")
    genes = list(mini_table.genes[:6])
    table = pd.DataFrame({"slide_id": list(bulk), **{g: [bulk[s][k] for s in bulk] for k, g in enumerate(genes)}})
    table.to_csv(root / "bulk.csv", index=False)
    encode_dataset(EncodeJob(str(manifest), str(root / "vae"), str(root / "shards"), shard_size=40, size=32, batch_size=16,
                             image_encoder="timm", encoder_kwargs={"image": {"path": str(root / "vit")}}), progress=False)
    return root, manifest


def test_bags_are_the_token_means_of_each_slides_tiles(encoded):
    from mupd.data.shards import read_all
    from mupd.impute.slide_data import load_bags
    from mupd.impute.slide_encoded import encoded_bags

    root, manifest = encoded
    data = load_bags(root / "shards", root / "bulk.csv")
    assert sorted(data.ids) == sorted(f"{s}-s{k}" for s in ("B4", "C5") for k in range(4))
    assert data.values.shape == (8, 6) and "image encoder's tokens" in data.features
    shards = read_all(root / "shards")  # the shard reader's own view, padded tokens + mask
    w = shards["image_mask"].float().unsqueeze(-1)
    means = ((shards["image"] * w).sum(1) / w.sum(1)).numpy()
    tiles = pd.read_csv(manifest).set_index("id")
    for slide, bag in zip(data.ids, data.bags):
        rows = [k for k, i in enumerate(shards["ids"]) if tiles.loc[i, "slide_id"] == f"{slide}.tif"]
        assert len(rows) == 12 == len(bag)
        np.testing.assert_allclose(bag, means[rows], rtol=1e-5, atol=1e-6)
    _, coords, _ = encoded_bags(root / "shards")
    first = coords[data.ids[0]]
    assert first.shape == (12, 2) and (first[:, 0] == tiles[tiles["slide_id"] == f"{data.ids[0]}.tif"]["x"].to_numpy()).all()


def test_mil_cli_trains_and_predicts_from_encode_shards(encoded, tmp_path, capsys):
    root, manifest = encoded
    model = tmp_path / "mil"
    assert main(["impute", "slide-train", "--features", str(root / "shards"), "--table", str(root / "bulk.csv"),
                 "--normalisation", "log1p_cpm", "--epochs", "3", "--out", str(model)]) == 0
    out = tmp_path / "pred.csv"
    assert main(["impute", "slide-predict", str(model), "--features", str(root / "shards"), "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    assert len(pred) == 8 and pred.shape[1] == 7 and np.isfinite(pred.iloc[:, 1:].to_numpy()).all()
    # the manifest moved: a one-line error naming --manifest, then --manifest finds it
    moved = tmp_path / "moved.csv"
    shutil.copy(manifest, moved)
    shutil.copytree(root / "shards", tmp_path / "shards")
    index = (tmp_path / "shards" / "index.json")
    index.write_text(index.read_text().replace(str(manifest), str(tmp_path / "gone.csv")))
    capsys.readouterr()
    argv = ["impute", "slide-predict", str(model), "--features", str(tmp_path / "shards"), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--manifest" in err, err
    assert main(argv + ["--manifest", str(moved)]) == 0
