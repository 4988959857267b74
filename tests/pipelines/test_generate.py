"""Pipeline.from_pretrained(dir)(text=, rna=, image=, ...) on a tiny model with real inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mupd.errors import MupdError
from mupd.pipelines import Pipeline
from mupd.pipelines.pngmeta import REQUIRED_KEYS, read_params


@pytest.fixture(scope="module")
def pipe(generate_dir):
    return Pipeline.from_pretrained(generate_dir, device="cpu")


@pytest.fixture(scope="module")
def slide(sample_data):
    path = sample_data / "tcga" / "tcga_paad_all_clean.csv.gz"
    return f"{path}:{pd.read_csv(path, nrows=50, low_memory=False)['slide_id'].iloc[45]}"


@pytest.fixture(scope="module")
def reference(sample_data):
    return sorted((sample_data / "pcam/valid/1").iterdir())[3]


def test_text_generation_returns_images_with_parameters(pipe, tmp_path):
    out = pipe(text="lymph node with metastatic tumour", n=2, steps=3, seed=5)
    assert len(out) == 2 and all(isinstance(im, Image.Image) and im.size == (32, 32) and im.mode == "RGB" for im in out)
    params = out.parameters[1]
    assert set(REQUIRED_KEYS) <= set(params)
    assert params["mupd:seed"] == 6 and params["mupd:conditions"]["text"] == "lymph node with metastatic tumour"
    assert params["mupd:model"]["config_sha256"] and params["mupd:sampler"] == "heun" and params["mupd:steps"] == 3
    rows = out.save(tmp_path)
    assert read_params(tmp_path / rows[1]["file"]) == json_round_trip(params)
    assert (tmp_path / "manifest.csv").read_text().count("\n") == 3


def json_round_trip(obj):
    import json

    return json.loads(json.dumps(obj))


def test_same_seed_same_pixels_and_single_image_repeats(pipe):
    a = pipe(text="tumour", n=3, steps=2, seed=11, output_type="np")
    b = pipe(text="tumour", n=3, steps=2, seed=11, output_type="np")
    assert np.array_equal(a.images, b.images)
    c = pipe(text="tumour", n=3, steps=2, seed=12, output_type="np")
    assert not np.array_equal(a.images, c.images)
    # image 2 of the batch (seed 13) again, alone: same pixels up to float batching (<= 1 grey level)
    alone = pipe(text="tumour", n=1, steps=2, seed=13, output_type="np")
    assert np.abs(alone.images[0] - a.images[2]).max() <= 1 / 255 + 1e-6


def test_output_types_agree(pipe):
    pil = pipe(text="tumour", n=1, steps=2, seed=3)
    arr = pipe(text="tumour", n=1, steps=2, seed=3, output_type="np")
    pt = pipe(text="tumour", n=1, steps=2, seed=3, output_type="pt")
    assert arr.images.shape == (1, 32, 32, 3) and pt.images.shape == (1, 3, 32, 32)
    assert np.array_equal(np.asarray(pil[0]), (arr.images[0] * 255).round().astype(np.uint8))
    assert torch.equal(pt.images[0].permute(1, 2, 0), torch.from_numpy(arr.images[0]))
    with pytest.raises(MupdError, match="output_type"):
        pipe(text="x", n=1, steps=1, output_type="jpeg")


def test_conditions_change_the_image(pipe):
    a = pipe(text="tumour cells", n=1, steps=2, seed=0, output_type="np").images
    b = pipe(text="adipose tissue", n=1, steps=2, seed=0, output_type="np").images
    u = pipe(n=1, steps=2, seed=0, output_type="np").images
    assert not np.array_equal(a, b) and not np.array_equal(a, u)


def test_all_three_modalities_with_per_modality_guidance(pipe, slide, reference):
    out = pipe(text="pancreatic adenocarcinoma", rna=slide, image=reference, n=2, steps=2, seed=1,
               guidance={"text": 3.0, "rna": 2.0, "image": 1.5}, guidance_interval=(0.0, 0.7))
    assert len(out) == 2
    cond = out.parameters[0]["mupd:conditions"]
    assert cond["rna"]["source"] == slide and len(cond["rna"]["sha256"]) == 16
    assert cond["image"]["source"] == str(reference)
    assert out.parameters[0]["mupd:guidance"] == {"text": 3.0, "rna": 2.0, "image": 1.5}
    assert any("24/24 vocabulary genes matched" in note for note in out.notes)


def test_rna_from_gene_dict_reports_missing_genes(pipe):
    genes = pipe.vocabulary.genes
    out = pipe(rna={genes[0]: 1.0, genes[1]: -0.5, "NOT_A_GENE": 3.0}, n=1, steps=1, seed=0)
    note = out.notes[0]
    assert "2/24" in note and "NOT_A_GENE" in note and "22 missing" in note


def test_label_uses_the_stored_caption(pipe):
    a = pipe(label="1", n=1, steps=2, seed=0, output_type="np")
    b = pipe(text="lymph node with metastatic tumour", n=1, steps=2, seed=0, output_type="np")
    assert np.array_equal(a.images, b.images) and a.parameters[0]["mupd:conditions"]["label"] == "1"
    with pytest.raises(MupdError, match="not one of the model's labels"):
        pipe(label="7", n=1, steps=1)


def test_malformed_inputs_raise_clear_errors(pipe, sample_data, tmp_path, reference):
    with pytest.raises(MupdError, match="does not exist"):
        Pipeline.from_pretrained(tmp_path / "no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MupdError, match="no model_index.json"):
        Pipeline.from_pretrained(tmp_path / "empty")
    with pytest.raises(MupdError, match="no cells stream"):
        pipe(text="x", n=1, steps=1, guidance={"cells": 2.0})
    with pytest.raises(MupdError, match="no rna condition was given"):
        pipe(text="x", n=1, steps=1, guidance={"rna": 2.0})
    mouse = sample_data / "visium/squidpy/test_data.h5ad"
    with pytest.raises(MupdError, match="none of its 1999 genes"):
        pipe(rna=f"{mouse}:AAATTGCGGCGGTTCT-1", n=1, steps=1)
    Image.open(reference).convert("L").save(tmp_path / "grey.png")
    with pytest.raises(MupdError, match="mode L"):
        pipe(image=tmp_path / "grey.png", n=1, steps=1)
    with pytest.raises(MupdError, match="sampler"):
        pipe(text="x", n=1, steps=1, sampler="ddim")
    with pytest.raises(MupdError, match="2 values given for n=3"):
        pipe(text=["a", "b"], n=3, steps=1)


def test_rna_through_vocabulary_and_pathway_scores(tmp_path, sample_data, make_vae):
    """A model whose RNA stream takes the 331 SurvPath pathway scores: a TCGA row is mapped through
    the saved vocabulary, scored, and fed as a vector modality."""
    from mupd import MuPD
    from mupd.bundle import save_bundle
    from mupd.data.expression import GeneVocabulary
    from mupd.data.pathways import PathwayScorer

    path = sample_data / "tcga" / "tcga_paad_all_clean.csv.gz"
    table = pd.read_csv(path, nrows=30, low_memory=False)
    cols = [c for c in table.columns if c.endswith("_rnaseq")]
    vocab = GeneVocabulary.fit(table[cols].to_numpy(np.float64), [c[:-7] for c in cols], normalisation="none")
    scorer = PathwayScorer.from_csv(sample_data / "genesets" / "combine_signatures.csv")
    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 32}, vector_modalities={"rna": len(scorer)}, input_size=8)
    save_bundle(tmp_path / "p", model=model, vae=make_vae(), vocabulary=vocab, pathways=scorer,
                encoders={"text": ("hashed-words", {"width": 32}, None)}, extra={"image_size": 32})
    pipe = Pipeline.from_pretrained(tmp_path / "p")
    vector, source, note = pipe.rna_vector(f"{path}:{table['slide_id'].iloc[3]}")
    expected = scorer.score(vocab.transform(table.loc[[3], cols].to_numpy(np.float32), [c[:-7] for c in cols])[0], vocab.genes)[0]
    assert vector.shape == (len(scorer),) and np.allclose(vector, expected)
    assert f"{len(cols)}/{len(cols)} vocabulary genes matched" in note
    out = pipe(rna=f"{path}:{table['slide_id'].iloc[3]}", text="pancreas", n=1, steps=1, guidance={"rna": 2.0})
    assert out.parameters[0]["mupd:conditions"]["rna"]["source"].endswith(table["slide_id"].iloc[3])
