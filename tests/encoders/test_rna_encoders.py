"""RNA encoders on real TCGA expression and the real SurvPath gene sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mupd.data.expression import GeneVocabulary
from mupd.data.pathways import PathwayScorer
from mupd.encoders import registry
from mupd.errors import MupdError


@pytest.fixture(scope="module")
def tcga(sample_data):
    table = pd.read_csv(sample_data / "tcga" / "tcga_brca_all_clean.csv.gz", nrows=40)
    cols = [c for c in table.columns if c.endswith("_rnaseq")]
    genes = [c[: -len("_rnaseq")] for c in cols]
    values = table[cols].to_numpy(np.float32)
    vocab = GeneVocabulary.fit(values, genes, normalisation="none", zscore=True)
    x, _ = vocab.transform(values, genes)
    scorer = PathwayScorer.from_csv(sample_data / "genesets" / "combine_signatures.csv")
    return vocab, torch.from_numpy(x), scorer


def test_pathway_tokens_match_scorer_and_formula(tcga):
    vocab, x, scorer = tcga
    enc = registry.build("rna", "pathway-tokens", genes=vocab, pathways=scorer, width=16)
    assert enc.num_tokens == 331 and enc.width == 16 and enc.modality == "rna"
    scores = enc.scores(x[:5])
    np.testing.assert_allclose(scores.numpy(), scorer.score(x[:5].numpy(), vocab.genes), atol=1e-5)
    tokens, mask = enc.encode(x[:5])
    assert tokens.shape == (5, 331, 16) and mask.all()
    expected = scores[:, 7, None] * enc.tokens.weight[7] + enc.tokens.bias[7]
    torch.testing.assert_close(tokens[:, 7], expected)
    tokens.sum().backward()  # learnable: gradients reach the pathway embeddings
    assert enc.tokens.weight.grad is not None


def test_gene_tokens_and_mlp(tcga):
    vocab, x, _ = tcga
    gene = registry.build("rna", "gene-tokens", genes=vocab.genes, width=8)
    tokens, _ = gene.encode(x[:3])
    assert tokens.shape == (3, len(vocab), 8)
    mlp = registry.build("rna", "expression-mlp", genes=vocab.genes, width=8, hidden=16)
    tokens, mask = mlp.encode(x[:3])
    assert tokens.shape == (3, 1, 8) and mask.all() and mlp.embed(x[:3]).shape == (3, 8)


def test_save_load_round_trip(tcga, tmp_path, sample_data):
    vocab, x, _ = tcga
    enc = registry.build("rna", "pathway-tokens", genes=vocab, width=8,
                         pathways=sample_data / "genesets" / "combine_signatures.csv")
    enc.save_pretrained(tmp_path / "rna")
    again = registry.build("rna", "pathway-tokens", path=tmp_path / "rna")
    torch.testing.assert_close(again.encode(x[:4])[0], enc.encode(x[:4])[0])
    with pytest.raises(MupdError, match="not 'gene'"):
        registry.build("rna", "gene-tokens", path=tmp_path / "rna")
    (tmp_path / "rna" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(MupdError, match="truncated"):
        registry.build("rna", "pathway-tokens", path=tmp_path / "rna")


def test_bad_expression_is_refused(tcga):
    vocab, x, scorer = tcga
    enc = registry.build("rna", "expression-mlp", genes=vocab, width=8)
    with pytest.raises(MupdError, match="genes but the encoder was built for"):
        enc.encode(x[:, :10])
    bad = x[:2].clone()
    bad[0, 3] = float("nan")
    with pytest.raises(MupdError, match="NaN"):
        enc.encode(bad)
    with pytest.raises(MupdError, match="pathways="):
        registry.build("rna", "pathway-tokens", genes=vocab)
    with pytest.raises(MupdError, match="shares a gene"):
        registry.build("rna", "pathway-tokens", genes=["NOTAGENE"], pathways=scorer)
