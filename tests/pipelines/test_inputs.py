"""RNA input parsing (TCGA rows, gene TSVs, AnnData observations) and batch files, on real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mupd.errors import MupdError
from mupd.pipelines.inputs import RnaProfile, match_genes, read_condition_rows, read_rna


@pytest.fixture(scope="module")
def paad(sample_data):
    path = sample_data / "tcga" / "tcga_paad_all_clean.csv.gz"
    return path, pd.read_csv(path, nrows=5, low_memory=False)


def test_tcga_row_by_slide_id(paad):
    path, table = paad
    slide = table["slide_id"].iloc[2]
    profile = read_rna(f"{path}:{slide}")
    cols = [c for c in table.columns if c.endswith("_rnaseq")]
    assert profile.genes == [c[:-7] for c in cols]
    assert np.allclose(profile.values, table.loc[2, cols].to_numpy(np.float32))
    with pytest.raises(MupdError, match="no row with slide_id or case_id = 'nope'"):
        read_rna(f"{path}:nope")
    with pytest.raises(MupdError, match="pick a row"):
        read_rna(str(path))


def test_gene_value_tsv_with_and_without_header(tmp_path):
    (tmp_path / "h.tsv").write_text("gene\tvalue\nTP53\t1.5\nEGFR\t-0.25\n")
    (tmp_path / "n.tsv").write_text("TP53\t1.5\nEGFR\t-0.25\n")
    for name in ("h.tsv", "n.tsv"):
        p = read_rna(str(tmp_path / name))
        assert p.genes == ["TP53", "EGFR"] and np.allclose(p.values, [1.5, -0.25])
    (tmp_path / "nan.tsv").write_text("TP53\t1.5\nEGFR\tNaN\n")
    with pytest.raises(MupdError, match="NaN"):
        read_rna(str(tmp_path / "nan.tsv"))
    with pytest.raises(MupdError, match="does not exist"):
        read_rna(str(tmp_path / "missing.tsv:row"))


def test_h5ad_observation_and_no_overlap(sample_data):
    path = sample_data / "visium" / "squidpy" / "test_data.h5ad"
    profile = read_rna(f"{path}:AAATTGCGGCGGTTCT-1")
    assert len(profile.genes) == 1999 and profile.values.shape == (1999,)
    with pytest.raises(MupdError, match="pick one"):
        read_rna(str(path))
    with pytest.raises(MupdError, match="no observation"):
        read_rna(f"{path}:XYZ")
    # mouse gene symbols against a human vocabulary: nothing overlaps -> a clear error
    with pytest.raises(MupdError, match="none of its 1999 genes"):
        match_genes(profile, ["TP53", "EGFR", "ERBB2"])


def test_match_reports_unknown_and_missing():
    profile = RnaProfile(np.ones(3), ["TP53", "FOO1", "EGFR"], "x.tsv")
    match = match_genes(profile, ["TP53", "EGFR", "ERBB2", "MKI67"])
    assert match.matched == 2 and match.unknown == ["FOO1"] and match.missing == ["ERBB2", "MKI67"]
    text = match.summary("x.tsv")
    assert "2/4" in text and "FOO1" in text and "ERBB2" in text


def test_batch_files(tmp_path):
    (tmp_path / "b.csv").write_text("text,n,seed\na tumour,2,5\nnormal tissue,,\n")
    rows = read_condition_rows(tmp_path / "b.csv")
    assert rows == [{"text": "a tumour", "n": 2, "seed": 5}, {"text": "normal tissue"}]
    (tmp_path / "b.jsonl").write_text('{"text": "x", "guidance": "text=2"}\n\n{"label": "1", "n": 1}\n')
    assert read_condition_rows(tmp_path / "b.jsonl")[1] == {"label": "1", "n": 1}
    (tmp_path / "bad.csv").write_text("prompt\nx\n")
    with pytest.raises(MupdError, match="unknown field"):
        read_condition_rows(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(MupdError, match="line 1 is not JSON"):
        read_condition_rows(tmp_path / "bad.jsonl")


def test_imputed_h5ad_is_not_normalised_twice(sample_data, tmp_path):
    """``mupd impute predict`` writes log1p-CPM; the generator must map it exactly as the raw counts."""
    import anndata

    from mupd.data.expression import GeneVocabulary, normalise
    from mupd.data.spatial import load_her2st

    spots = load_her2st(sample_data / "her2st", sections=["C5"])
    counts, genes = np.asarray(spots.counts[:40], dtype=np.float64), list(spots.genes)
    vocab = GeneVocabulary.fit(counts, genes, normalisation="log1p_cpm", top_k=64)
    raw = tmp_path / "raw.tsv"
    pd.DataFrame({"gene": genes, "value": counts[3]}).to_csv(raw, sep="\t", index=False)
    predicted = anndata.AnnData(normalise(counts[3:4], "log1p_cpm").astype(np.float32),
                                uns={"mupd_impute": {"values": "log1p_cpm"}})
    predicted.obs_names, predicted.var_names = ["spot"], genes
    predicted.write_h5ad(tmp_path / "pred.h5ad")

    from_raw, from_pred = read_rna(str(raw)), read_rna(f"{tmp_path / 'pred.h5ad'}:spot")
    assert from_pred.normalised == "log1p_cpm" and from_raw.normalised is None
    a = vocab.transform(from_raw.values[None], from_raw.genes)[0]
    b = vocab.transform(from_pred.values[None], from_pred.genes, normalised=from_pred.normalised)[0]
    np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(MupdError, match="already log_tpm"):
        vocab.transform(from_pred.values[None], from_pred.genes, normalised="log_tpm")
