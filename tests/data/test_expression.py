"""Gene vocabulary, pathway scores and bulk tables on real her2st counts, TCGA tables and SurvPath gene sets."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pandas as pd
import pytest

from mupd.data.expression import GeneVocabulary, normalise
from mupd.data.pathways import PathwayScorer
from mupd.data.records import Record
from mupd.data.tables import join_expression, load_bulk_table
from mupd.errors import MupdError


@pytest.fixture(scope="module")
def her2st_counts(sample_data):
    table = pd.read_csv(sample_data / "her2st" / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    return table.iloc[:60]


def test_vocabulary_fit_transform_save_load(her2st_counts, tmp_path, caplog):
    genes = list(her2st_counts.columns)
    counts = her2st_counts.to_numpy(np.float64)
    vocab = GeneVocabulary.fit(counts[:40], genes, "log1p_cpm", top_k=500, sample_ids=list(her2st_counts.index[:40]))
    assert len(vocab) == 500 and vocab.version.startswith("gv1-")
    z, report = vocab.transform(counts[:40], genes)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)  # training samples are z-scored exactly
    # the same numbers by hand: CPM over all genes, log1p, then the stored mean/std
    idx = [genes.index(g) for g in vocab.genes]
    ref = np.log1p(counts[40:] / counts[40:].sum(1, keepdims=True) * 1e6)[:, idx]
    got, _ = vocab.transform(counts[40:], genes)
    np.testing.assert_allclose(got, (ref - vocab.mean) / vocab.std, rtol=1e-5, atol=1e-5)
    assert report.missing == [] and report.unknown_count == len(genes) - 500
    path = vocab.save(tmp_path / "gene_vocabulary.json")
    back = GeneVocabulary.load(path)
    assert back.version == vocab.version and back.genes == vocab.genes
    np.testing.assert_array_equal(back.transform(counts[40:], genes)[0], got)
    # a sample lacking vocabulary genes: filled with the training mean (0) and reported by name
    drop = vocab.genes[:3]
    keep = [g for g in genes if g not in drop]
    with caplog.at_level(logging.WARNING, logger="mupd.data"):
        partial, rep = vocab.transform(her2st_counts[keep].to_numpy()[40:], keep)
    assert rep.missing == drop and "3/500 vocabulary genes missing" in caplog.text
    np.testing.assert_array_equal(partial[:, :3], 0.0)
    # an edited file is refused
    text = path.read_text().replace(vocab.genes[0], "NOT_A_GENE", 1)
    path.write_text(text)
    with pytest.raises(MupdError, match="does not match its content"):
        GeneVocabulary.load(path)


def test_nan_and_negative_counts_name_sample_and_gene(her2st_counts):
    genes = list(her2st_counts.columns)
    counts = her2st_counts.to_numpy(np.float64)[:5].copy()
    ids = list(her2st_counts.index[:5])
    counts[2, 7] = np.nan
    with pytest.raises(MupdError, match=rf"sample '{ids[2]}', gene '{genes[7]}' is NaN"):
        normalise(counts, "log1p_cpm", genes=genes, sample_ids=ids)
    counts[2, 7] = -3
    with pytest.raises(MupdError, match=rf"gene '{genes[7]}' is negative"):
        GeneVocabulary.fit(counts, genes, sample_ids=ids)
    assert normalise(counts, "none").shape == counts.shape  # already-normalised values may be negative


def test_pathway_scores_on_survpath_signatures(sample_data, her2st_counts, tmp_path):
    scorer = PathwayScorer.from_csv(sample_data / "genesets" / "combine_signatures.csv")
    assert len(scorer) == 331
    genes = list(her2st_counts.columns)
    vocab = GeneVocabulary.fit(her2st_counts.to_numpy(), genes)
    z, _ = vocab.transform(her2st_counts.to_numpy(), genes)
    scores, coverage = scorer.score(z, vocab.genes, return_coverage=True)
    assert scores.shape == (60, 331) and np.isfinite(scores).all()
    name = scorer.names[0]
    members = [vocab.genes.index(g) for g in scorer.pathways[name] if g in vocab.genes]
    np.testing.assert_allclose(scores[:, 0], z[:, members].mean(1), rtol=1e-5)
    assert 0.5 < coverage.mean_coverage <= 1.0
    # GMT input, with a set none of whose genes is measured: scored 0 and counted
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(f"{name}\tdesc\t" + "\t".join(scorer.pathways[name]) + "\nNOTHING\tdesc\tFAKE1\tFAKE2\n")
    small, cov = PathwayScorer.from_gmt(gmt).score(z, vocab.genes, return_coverage=True)
    np.testing.assert_allclose(small[:, 0], scores[:, 0])
    assert cov.empty == ["NOTHING"] and (small[:, 1] == 0).all()
    back = PathwayScorer.load(scorer.save(tmp_path / "pathways.json"))
    assert back.names == scorer.names


def test_tcga_table_joins_by_slide_and_case(sample_data, tmp_path):
    path = sample_data / "tcga" / "tcga_brca_all_clean.csv.gz"
    by_slide = load_bulk_table(path)
    assert len(by_slide.genes) == 1558 and by_slide.values.shape == (len(by_slide), 1558)
    slide = by_slide.ids[0]
    records = [Record("tile-a", None, meta={"slide_id": slide}), Record("tile-b", None, meta={"slide_id": "TCGA-XX-0000-01Z.svs"})]
    report = join_expression(records, by_slide, clinical=["oncotree_code"])
    assert report["matched"] == 1 and report["first_unmatched"] == ["tile-b"]
    np.testing.assert_array_equal(records[0].expression, by_slide.values[0])
    by_case = load_bulk_table(path, key="case_id")
    assert by_case.report["merged_duplicate_keys"]["count"] > 0  # several slides per case in TCGA
    tile = [Record("t", None, meta={"slide_id": slide})]
    join_expression(tile, by_case)
    np.testing.assert_array_equal(tile[0].expression, by_slide.values[0])
    vocab = GeneVocabulary.fit(by_slide.values, by_slide.genes, normalisation="none")
    assert vocab.transform(records[0].expression, records[0].genes)[0].shape == (1, 1558)
    with pytest.raises(MupdError, match="no '<GENE>_rnaseq' columns"):
        load_bulk_table(sample_data / "tcga" / "tcga_ucec_all_clean.csv.gz")
    # a NaN in a copy names the slide and the gene
    table = pd.read_csv(path, nrows=5)
    table.loc[3, "ERBB2_rnaseq"] = np.nan
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as fh:
        table.to_csv(fh, index=False)
    with pytest.raises(MupdError, match=r"gene 'ERBB2' is NaN"):
        load_bulk_table(bad)
