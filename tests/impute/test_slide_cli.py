"""``mupd impute slide-train | slide-predict`` on TRIDENT-layout feature files of real her2st
pseudo-slides (contiguous regions of a section; bulk = summed counts) — not TCGA slides."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from mupd.cli import main
from mupd.impute.features import pixel_features
from mupd.impute.slide import her2st_pseudo_slides


@pytest.fixture(scope="module")
def pseudo_slides(mini_table, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    bags, bulk, sections = her2st_pseudo_slides(mini_table, pixel_features(mini_table.images), n_bags_per_section=8,
                                                region=12, seed=0)
    ids = [f"PSEUDO-{s}-{k:02d}" for k, s in enumerate(sections)]
    (folder / "features").mkdir()
    for slide_id, bag in zip(ids, bags):
        with h5py.File(folder / "features" / f"{slide_id}.h5", "w") as f:
            f["features"] = bag
            f["coords"] = np.zeros((len(bag), 2), np.int64)
    table = pd.DataFrame(bulk[:, :200], columns=[f"{g}_rnaseq" for g in mini_table.genes[:200]])
    table.insert(0, "slide_id", [f"{i}.svs" for i in ids])
    table.to_csv(folder / "bulk.csv", index=False)
    return folder


def test_slide_train_and_predict(pseudo_slides, tmp_path, capsys):
    model = tmp_path / "mil"
    assert main(["impute", "slide-train", "--features", str(pseudo_slides / "features"), "--table",
                 str(pseudo_slides / "bulk.csv"), "--normalisation", "log1p_cpm", "--genes", "20", "--epochs", "3",
                 "--out", str(model)]) == 0
    assert main(["impute", "slide-predict", str(model), "--features", str(pseudo_slides / "features"),
                 "--out", str(tmp_path / "pred.csv")]) == 0
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert pred.shape == (16, 21) and pred["slide_id"].iloc[0] == "PSEUDO-B4-00"
    assert np.isfinite(pred.iloc[:, 1:].to_numpy()).all()


def test_mismatched_feature_files_and_tables_give_one_line_errors(pseudo_slides, tmp_path, capsys):
    model = tmp_path / "mil"
    main(["impute", "slide-train", "--features", str(pseudo_slides / "features"), "--table", str(pseudo_slides / "bulk.csv"),
          "--normalisation", "log1p_cpm", "--genes", "5", "--epochs", "1", "--out", str(model)])
    other = tmp_path / "other"
    other.mkdir()
    with h5py.File(other / "x.h5", "w") as f:
        f["features"] = np.zeros((4, 1024), np.float32)
    capsys.readouterr()
    assert main(["impute", "slide-predict", str(model), "--features", str(other), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "1024-wide but the model expects 768" in err and "\n" not in err
    wrong = tmp_path / "wrong.csv"
    pd.DataFrame({"slide_id": ["TCGA-XX"], "ERBB2_rnaseq": [1.0]}).to_csv(wrong, index=False)
    assert main(["impute", "slide-train", "--features", str(pseudo_slides / "features"), "--table", str(wrong),
                 "--out", str(tmp_path / "m2")]) == 2
    assert "no feature file" in capsys.readouterr().err
