"""``mupd impute train | predict | evaluate`` end to end on the miniature real her2st folder, and the
one-line errors for corrupt or mismatched inputs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from mupd.cli import main


@pytest.fixture(scope="module")
def trained(mini_her2st, tmp_path_factory):
    out = tmp_path_factory.mktemp("impute") / "model"
    assert main(["impute", "train", "--method", "pixels-ridge", "--data", str(mini_her2st), "--sections", "B4",
                 "--genes", "25", "--out", str(out)]) == 0
    return out


def test_train_predict_writes_anndata_maps_and_report(trained, mini_her2st, tmp_path):
    import anndata

    out = tmp_path / "c5.h5ad"
    assert main(["impute", "predict", str(trained), "--data", str(mini_her2st), "--sections", "C5", "--out", str(out),
                 "--report", str(tmp_path / "report")]) == 0
    adata = anndata.read_h5ad(out)
    assert adata.shape == (48, 25) and adata.obsm["spatial"].shape == (48, 2)
    assert adata.layers["measured"].shape == adata.shape and set(adata.obs["section"]) == {"C5"}
    assert adata.uns["mupd_impute"]["values"] == "log1p_cpm" and '"pixels-ridge"' in adata.uns["mupd_impute"]["model_json"]
    assert (tmp_path / "report" / "maps.png").stat().st_size > 5000
    assert "data:image/png;base64" in (tmp_path / "report" / "report.html").read_text()


def test_predicted_anndata_feeds_the_rna_reader(trained, mini_her2st, tmp_path):
    from mupd.pipelines.inputs import read_rna

    out = tmp_path / "p.h5ad"
    main(["impute", "predict", str(trained), "--data", str(mini_her2st), "--sections", "C5", "--out", str(out)])
    import anndata

    spot = anndata.read_h5ad(out).obs_names[0]
    profile = read_rna(f"{out}:{spot}")
    assert len(profile.genes) == 25 and np.isfinite(profile.values).all()


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mupd: error:") and match in err, err


def test_bad_inputs_give_one_line_errors_before_the_model_loads(trained, mini_her2st, tmp_path, capsys):
    broken = tmp_path / "broken_model"
    shutil.copytree(trained, broken)
    (broken / "readout.safetensors").write_bytes(b"damaged")  # never read: the argument checks come first
    base = ["impute", "predict", str(broken), "--data", str(mini_her2st), "--out", str(tmp_path / "x.h5ad")]
    _one_line_error(capsys, base + ["--sections", "C5", "--maps", "NOT_A_GENE"], "not in the model's 25-gene panel")
    _one_line_error(capsys, base + ["--sections", "Z9"], "sections ['Z9'] have no counts or no H&E image")
    _one_line_error(capsys, ["impute", "predict", str(tmp_path / "none"), "--out", "x.h5ad"], "does not exist")
    _one_line_error(capsys, ["impute", "predict", str(trained), "--out", "x.csv"], "must name a .h5ad file")
    _one_line_error(capsys, ["impute", "evaluate", "--protocol", "her2st-loso", "--data", str(mini_her2st),
                             "--out", str(tmp_path / "r.json")], "lacks ['C2', 'C3', 'C4']")


def _copy_her2st(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_spots_outside_the_image_and_nan_counts_are_refused(trained, mini_her2st, tmp_path, capsys):
    moved = _copy_her2st(mini_her2st, tmp_path / "moved")
    spots = moved / "ST-spotfiles" / "C5_selection.tsv"
    table = pd.read_csv(spots, sep="\t")
    table.loc[0, "pixel_x"] = 99999.0
    table.to_csv(spots, sep="\t", index=False)
    argv = ["impute", "predict", str(trained), "--sections", "C5", "--out", str(tmp_path / "y.h5ad")]
    _one_line_error(capsys, argv + ["--data", str(moved)], "lie outside the")
    nan = _copy_her2st(mini_her2st, tmp_path / "nan")
    counts = pd.read_csv(nan / "ST-cnts" / "C5.tsv.gz", sep="\t", index_col=0)
    counts.iloc[3, 2] = np.nan
    counts.to_csv(nan / "ST-cnts" / "C5.tsv.gz", sep="\t")
    _one_line_error(capsys, argv + ["--data", str(nan)], "NaN/inf counts")


def test_unknown_panel_genes_are_refused(mini_table):
    from mupd.errors import MupdError
    from mupd.impute import protocols

    with pytest.raises(MupdError, match="panel genes are not in the expression table"):
        protocols.normalised_panel(mini_table.counts, mini_table.genes, ["ERBB2_TYPO"])
