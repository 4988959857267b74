"""Per-modality inference scales lambda_m (DESIGN section 2) and per-modality guidance, API and CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mupd.cli import main
from mupd.errors import MupdError
from mupd.pipelines import Pipeline
from mupd.pipelines.pngmeta import read_params


@pytest.fixture(scope="module")
def rna_spec(sample_data):
    table = sample_data / "tcga/tcga_paad_all_clean.csv.gz"
    return f"{table}:{pd.read_csv(table, nrows=2, low_memory=False)['slide_id'][1]}"


def test_a_zero_scale_switches_the_stream_off_and_is_recorded(gen, rna_spec):
    run = dict(n=2, steps=2, seed=5, output_type="np")
    without_text = gen(rna=rna_spec, **run)
    text_off = gen(text="metastatic tumour", rna=rna_spec, scales={"text": 0.0}, **run)
    assert np.array_equal(text_off.images, without_text.images)  # lambda_text = 0: exactly no text stream
    as_trained = gen(text="metastatic tumour", rna=rna_spec, **run)
    assert np.array_equal(gen(text="metastatic tumour", rna=rna_spec, scales={"text": 1.0}, **run).images,
                          as_trained.images)
    louder = gen(text="metastatic tumour", rna=rna_spec, scales={"rna": 1.5}, guidance={"rna": 2, "text": 3}, **run)
    assert not np.array_equal(louder.images, as_trained.images)
    params = louder.parameters[0]
    assert params["mupd:scales"] == {"rna": 1.5} and params["mupd:guidance"] == {"rna": 2.0, "text": 3.0}
    assert "mupd:scales" not in as_trained.parameters[0]


def test_scale_errors_name_the_problem(gen, make_vae, tmp_path):
    with pytest.raises(MupdError, match="no cells stream"):
        gen(text="x", scales={"cells": 2.0}, steps=1)
    with pytest.raises(MupdError, match="no rna condition was given"):
        gen(text="x", scales={"rna": 2.0}, steps=1)
    with pytest.raises(MupdError, match="must be a number >= 0"):
        gen(text="x", scales={"text": -1.0}, steps=1)
    from mupd import MuPD
    from mupd.bundle import save_bundle

    shared = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 32}, input_size=8, attention="shared")
    save_bundle(tmp_path / "shared", model=shared, vae=make_vae(), encoders={"text": ("hashed-words", {"width": 32}, None)},
                extra={"image_size": 32})
    with pytest.raises(MupdError, match="decoupled attention"):
        Pipeline.from_pretrained(tmp_path / "shared", device="cpu")(text="x", scales={"text": 2.0}, steps=1)
    rc = main(["generate", "--model", str(tmp_path / "shared"), "--text", "x", "--scale", "text=2", "--out",
               str(tmp_path / "o")])
    assert rc == 2


def test_cli_takes_per_modality_guidance_and_scales(generate_dir, rna_spec, tmp_path, sample_data):
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(generate_dir), "--text", "tumour", "--rna", rna_spec, "--n", "1",
                 "--steps", "1", "--guidance", "rna=2", "--guidance", "text=3", "--scale", "rna=1.5", "--out",
                 str(out)]) == 0
    params = read_params(out / "image-00000.png")
    assert params["mupd:guidance"] == {"rna": 2.0, "text": 3.0} and params["mupd:scales"] == {"rna": 1.5}
    patch = sorted((sample_data / "pcam/valid/1").iterdir())[0]
    assert main(["vary", "--model", str(generate_dir), "--image", str(patch), "--strength", "0.5", "--n", "1",
                 "--steps", "2", "--scale", "image=0.5", "--out", str(tmp_path / "vary")]) == 0
    assert read_params(tmp_path / "vary/vary-00000.png")["mupd:scales"] == {"image": 0.5}


def test_stain_scales_reach_the_readout(stain_dir, sample_data):
    stainer = Pipeline.from_pretrained(stain_dir, device="cpu")
    tile = torch.zeros(32, 32, 3, dtype=torch.uint8).numpy() + 128
    a = stainer.stain(tile, text="Ki67", output_type="np")
    b = stainer.stain(tile, text="Ki67", scales={"text": 3.0}, output_type="np")
    assert not np.array_equal(a.images, b.images) and b.parameters[0]["mupd:scales"] == {"text": 3.0}
