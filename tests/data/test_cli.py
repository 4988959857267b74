"""``mupd data tile|index|encode|vocab`` and ``mupd vae train`` through ``mupd.cli.main``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mupd.checkpoint import load_tensors
from mupd.cli import main
from mupd.errors import MupdError
from mupd.data import read_manifest
from mupd.data.expression import GeneVocabulary
from mupd.data.shards import read_all
from mupd.data.stains import DEEPLIIF_PANELS, deepliif_records, paired_manifest
from mupd.encoders.vae import LatentAutoencoder


def test_tile_index_encode_on_real_data(sample_data, tmp_path, capsys):
    slide = sample_data / "wsi" / "cmu_small_region.svs"
    assert main(["data", "tile", str(slide), "--out", str(tmp_path / "tiles"), "--mpp", "1.0", "--size", "256",
                 "--no-progress"]) == 0
    tiles = read_manifest(tmp_path / "tiles" / "manifest.csv")
    assert len(tiles) > 0 and tiles[0].meta["slide_id"] == "cmu_small_region.svs"
    assert main(["data", "tile", str(slide), "--out", str(tmp_path / "t2"), "--size", "256"]) == 2
    assert "exactly one of mpp" in capsys.readouterr().err

    assert main(["data", "index", str(sample_data / "pcam" / "valid"), "--out", str(tmp_path / "pcam.csv"),
                 "--caption-template", "pcam", "--limit", "4"]) == 0
    records = read_manifest(tmp_path / "pcam.csv")
    assert len(records) == 8 and records[-1].caption == "lymph node tissue with metastatic tumour"

    LatentAutoencoder.tiny().save_pretrained(tmp_path / "vae")
    assert main(["data", "encode", str(tmp_path / "pcam.csv"), "--vae", str(tmp_path / "vae"), "--out",
                 str(tmp_path / "shards"), "--shard-size", "4", "--size", "32", "--text-encoder", "hashed-words",
                 "--encoder-arg", "text.width=16", "--no-progress"]) == 0
    data = read_all(tmp_path / "shards")
    assert data["ids"] == [r.id for r in records] and data["text"].shape[-1] == 16
    assert "8 records in 2 shards" in capsys.readouterr().out
    assert main(["data", "encode", str(tmp_path / "nope.csv"), "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "x")]) == 2


def test_index_spatial_and_fit_vocabulary(sample_data, tmp_path):
    assert main(["data", "index", str(sample_data / "visium" / "squidpy" / "test_data.h5ad"), "--image",
                 str(sample_data / "visium" / "squidpy" / "test_img.jpg"), "--size", "32", "--out", str(tmp_path / "v.csv")]) == 0
    spots = read_manifest(tmp_path / "v.csv")
    assert len(spots) == 49 and spots[0].expression.shape == (1999,) and spots[0].meta["section"] == "V1_Adult_Mouse_Brain"
    assert main(["data", "vocab", str(tmp_path / "v.csv"), "--out", str(tmp_path / "vocab.json"),
                 "--normalisation", "none", "--top-k", "100"]) == 0
    vocab = GeneVocabulary.load(tmp_path / "vocab.json")
    assert len(vocab) == 100
    z, report = vocab.transform(np.stack([r.expression for r in spots]), spots[0].genes)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    LatentAutoencoder.tiny().save_pretrained(tmp_path / "vae")
    assert main(["data", "encode", str(tmp_path / "v.csv"), "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "s"),
                 "--vocabulary", str(tmp_path / "vocab.json"), "--no-progress"]) == 0
    data = read_all(tmp_path / "s")
    torch.testing.assert_close(data["rna_values"], torch.from_numpy(z))
    assert GeneVocabulary.load(tmp_path / "s" / "gene_vocabulary.json").version == vocab.version


def test_deepliif_panels_and_paired_manifest(sample_data, tmp_path):
    root = sample_data / "stains" / "deepliif" / "Sample_Dataset"
    pairs = deepliif_records(root, "train", source="ihc", target=("dapi", "lap2"))
    assert len(pairs) == 2 and pairs[0].source_image.shape == (512, 512, 3) and pairs[0].image.shape == (512, 512, 6)
    assert len(DEEPLIIF_PANELS) == 6
    with pytest.raises(MupdError, match="pixel-identical"):  # the public test split repeats the IHC panel
        deepliif_records(root, "test")
    assert main(["data", "index", str(root), "--out", str(tmp_path / "pairs.csv")]) == 0
    records = paired_manifest(tmp_path / "pairs.csv")
    assert len(records) == 2 and all(r.source_image.exists() for r in records)


def test_vae_train_reports_psnr_ssim_and_resumes(sample_data, tmp_path):
    args = ["vae", "train", "--data", str(sample_data / "pcam" / "train"), "--out", str(tmp_path / "vae"), "--preset", "tiny",
            "--size", "16", "--batch-size", "4", "--limit", "6", "--holdout", "4", "--checkpoint-every", "4", "--no-progress"]
    assert main(args + ["--samples", "4"]) == 0
    first = json.loads((tmp_path / "vae" / "metrics.json").read_text())
    assert first["images_seen"] == 4 and first["n_holdout"] == 4 and 0 < first["psnr"] < 60 and -1 <= first["ssim"] <= 1
    assert main(args + ["--samples", "8"]) == 0  # resumes from checkpoint/ at 4 images
    second = json.loads((tmp_path / "vae" / "metrics.json").read_text())
    assert second["images_seen"] == 8 and second["final_loss"] != first["final_loss"]
    ae = LatentAutoencoder.from_pretrained(tmp_path / "vae")
    assert ae.downsample == 2 and ae.meta["trained_on"].endswith("train")
    # the resumed run ends where an uninterrupted one does
    straight = [a if a != str(tmp_path / "vae") else str(tmp_path / "straight") for a in args]
    assert main(straight + ["--samples", "8"]) == 0
    resumed = load_tensors(tmp_path / "vae" / "checkpoint" / "model.safetensors")
    uninterrupted = load_tensors(tmp_path / "straight" / "checkpoint" / "model.safetensors")
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key])
