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


def _class_folder(sample_data, root, per_class=3):
    from PIL import Image

    for label in ("0", "1"):
        (root / label).mkdir(parents=True)
        for path in sorted((sample_data / "pcam" / "valid" / label).iterdir())[:per_class]:
            with Image.open(path) as im:
                im.save(root / label / f"{path.stem}.png")
    return root


def test_index_reports_corrupt_images_and_skips_them_on_request(sample_data, tmp_path, capsys):
    root = _class_folder(sample_data, tmp_path / "patches")
    good = sorted((root / "1").iterdir())[0]
    (root / "1" / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert main(["data", "index", str(root), "--out", str(tmp_path / "m.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "1 of 7 image files cannot be decoded" in err and "truncated.png" in err and "--skip-bad" in err
    assert not (tmp_path / "m.csv").exists()
    assert main(["data", "index", str(root), "--out", str(tmp_path / "m.csv"), "--skip-bad", "--no-progress"]) == 0
    assert "skipped 1 unreadable image files" in capsys.readouterr().err
    assert len(read_manifest(tmp_path / "m.csv")) == 6


def test_limit_takes_a_seeded_class_balanced_sample(sample_data, tmp_path, capsys):
    # a manifest sorted by class: the first rows are all class 0
    assert main(["data", "index", str(sample_data / "pcam" / "valid"), "--out", str(tmp_path / "all.csv"), "--no-progress"]) == 0
    assert [r.label for r in read_manifest(tmp_path / "all.csv")[:100]] == [0] * 100
    LatentAutoencoder.tiny().save_pretrained(tmp_path / "vae")
    ids = []
    for run in ("a", "b"):
        assert main(["data", "encode", str(tmp_path / "all.csv"), "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / run),
                     "--size", "16", "--limit", "3", "--no-progress"]) == 0
        data = read_all(tmp_path / run)
        assert sorted(data["labels"].tolist()) == [0, 0, 0, 1, 1, 1]
        ids.append(data["ids"])
    assert ids[0] == ids[1]  # seeded
    first_rows = [r.id for r in read_manifest(tmp_path / "all.csv")[:3]]
    assert ids[0][:3] != first_rows


def test_crops_are_written_beside_the_manifest_named_after_it(sample_data, tmp_path, monkeypatch, capsys):
    visium = sample_data / "visium" / "squidpy"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for name in ("a", "b"):
        assert main(["data", "index", str(visium / "test_data.h5ad"), "--image", str(visium / "test_img.jpg"), "--size", "16",
                     "--out", str(tmp_path / "out" / f"{name}.csv"), "--no-progress"]) == 0
    assert len(list((tmp_path / "out" / "a_images").iterdir())) == 49 and (tmp_path / "out" / "b_images").is_dir()
    assert (tmp_path / "out" / "a.expression.npz").is_file() and not list((tmp_path / "cwd").iterdir())
    out = capsys.readouterr().out
    assert f"also wrote {tmp_path / 'out' / 'b_images'} (49 files" in out


def test_encode_checks_paths_before_loading_anything(tmp_path):
    import subprocess
    import sys

    (tmp_path / "m.csv").write_text("id,path\na,a.png\n")
    code = ("import sys; from mupd.cli import main; rc = main(['data', 'encode', sys.argv[1], '--vae', sys.argv[2], "
            "'--out', sys.argv[3]]); print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.csv"), str(tmp_path / "runs" / "vae"),
                          str(tmp_path / "shards")], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert f"--vae {tmp_path / 'runs' / 'vae'}: autoencoder folder does not exist" in out.stderr


def test_bad_paths_and_options_fail_before_any_work(tmp_path, capsys):
    cases = [
        (["vae", "train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "v")], "--data"),
        (["vae", "train", "--data", str(tmp_path), "--out", str(tmp_path / "v"), "--size", "4"], "--size must be at least 8"),
        (["data", "tile", str(tmp_path / "none.svs"), "--out", str(tmp_path / "t"), "--mpp", "1"], "none.svs does not exist"),
        (["data", "index", str(tmp_path), "--out", str(tmp_path)], "must end in .csv"),
        (["align", "evaluate", str(tmp_path)], "no config.json"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_encode_refuses_a_vocabulary_without_shared_genes_before_loading_the_autoencoder(sample_data, tmp_path, capsys):
    visium = sample_data / "visium" / "squidpy"
    assert main(["data", "index", str(visium / "test_data.h5ad"), "--image", str(visium / "test_img.jpg"), "--size", "16",
                 "--out", str(tmp_path / "v.csv"), "--no-progress"]) == 0
    GeneVocabulary.fit(np.ones((3, 2)), ["NOT_A_GENE_1", "NOT_A_GENE_2"], "none", zscore=False).save(tmp_path / "vocab.json")
    (tmp_path / "vae").mkdir()  # exists, but holds no autoencoder: loading it would fail differently
    assert main(["data", "encode", str(tmp_path / "v.csv"), "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "s"),
                 "--vocabulary", str(tmp_path / "vocab.json"), "--no-progress"]) == 2
    assert "share none of the vocabulary's 2 genes" in capsys.readouterr().err
