"""``mupd generate | vary | stain | translate | augment`` through ``mupd.cli.main``."""

from __future__ import annotations

import csv
import json

import pandas as pd
from PIL import Image

from mupd.cli import main
from mupd.pipelines.pngmeta import REQUIRED_KEYS, read_params


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_generate_writes_pngs_with_parameters(generate_dir, tmp_path, sample_data):
    slide = pd.read_csv(sample_data / "tcga/tcga_paad_all_clean.csv.gz", nrows=3, low_memory=False)["slide_id"][0]
    rna = f"{sample_data / 'tcga/tcga_paad_all_clean.csv.gz'}:{slide}"
    out = tmp_path / "gen"
    rc = main(["generate", "--model", str(generate_dir), "--text", "metastatic tumour", "--rna", rna, "--n", "2",
               "--steps", "2", "--seed", "3", "--guidance", "text=2,rna=1.5", "--out", str(out)])
    assert rc == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 2 and Image.open(files[0]).size == (32, 32)
    params = read_params(files[1])
    assert set(REQUIRED_KEYS) <= set(params) and params["mupd:seed"] == 4
    assert params["mupd:guidance"] == {"text": 2.0, "rna": 1.5} and params["mupd:conditions"]["rna"]["source"] == rna
    manifest = rows(out / "manifest.csv")
    assert [r["file"] for r in manifest] == [f.name for f in files] and manifest[1]["seed"] == "4"


def test_generate_batch_file_and_resume(generate_dir, tmp_path):
    batch = tmp_path / "conditions.jsonl"
    batch.write_text(json.dumps({"label": "0", "n": 1}) + "\n" + json.dumps({"text": "tumour", "n": 2, "seed": 9}) + "\n")
    out = tmp_path / "batch"
    args = ["generate", "--model", str(generate_dir), "--batch", str(batch), "--steps", "1", "--out", str(out)]
    assert main(args) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["row0000-00000.png", "row0001-00000.png", "row0001-00001.png"]
    assert read_params(out / "row0001-00001.png")["mupd:seed"] == 10
    assert read_params(out / "row0000-00000.png")["mupd:conditions"]["label"] == "0"
    before = (out / "row0001-00000.png").stat().st_mtime_ns
    assert main(args) == 0  # resumes: rows already written are skipped
    assert (out / "row0001-00000.png").stat().st_mtime_ns == before and len(rows(out / "manifest.csv")) == 3


def test_cli_errors_are_one_line(generate_dir, tmp_path, sample_data, capsys):
    mouse = sample_data / "visium/squidpy/test_data.h5ad"
    cases = [
        (["--model", str(tmp_path / "nope"), "--text", "x"], "does not exist"),
        (["--model", str(generate_dir), "--rna", f"{mouse}:AAATTGCGGCGGTTCT-1"], "none of its 1999 genes"),
        (["--model", str(generate_dir), "--text", "x", "--guidance", "cells=2"], "no cells stream"),
        (["--model", str(generate_dir), "--text", "x", "--guidance", "lots"], "not understood"),
    ]
    for extra, message in cases:
        rc = main(["generate", *extra, "--n", "1", "--steps", "1", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.startswith("mupd: error:") and "Traceback" not in err


def test_vary_stain_translate(generate_dir, stain_dir, tmp_path, sample_data):
    patch = sorted((sample_data / "pcam/valid/1").iterdir())[0]
    crop = tmp_path / "crop.png"
    Image.open(patch).crop((0, 0, 32, 32)).save(crop)
    assert main(["vary", "--model", str(generate_dir), "--image", str(crop), "--strength", "0.5", "--n", "2",
                 "--steps", "2", "--out", str(tmp_path / "vary")]) == 0
    assert read_params(tmp_path / "vary/vary-00001.png")["mupd:strength"] == 0.5
    ihc = tmp_path / "ihc.png"
    Image.open(sample_data / "stains/deepliif/Sample_Dataset/test/6_2.png").crop((0, 0, 60, 48)).save(ihc)
    assert main(["stain", "--model", str(stain_dir), "--image", str(ihc), "--out", str(tmp_path / "stain")]) == 0
    stained = Image.open(tmp_path / "stain/ihc.png")
    assert stained.size == (120, 48) and read_params(tmp_path / "stain/ihc.png")["mupd:sampler"] == "readout"
    assert main(["translate", "--model", str(generate_dir), "--image", str(ihc), "--strength", "0.4", "--steps", "2",
                 "--out", str(tmp_path / "tr")]) == 0
    assert read_params(tmp_path / "tr/ihc.png")["mupd:mode"] == "sdedit"
    assert rows(tmp_path / "tr/manifest.csv")[0]["source"] == str(ihc)


def test_augment_writes_a_labelled_dataset_and_resumes(generate_dir, tmp_path, sample_data, capsys):
    from mupd.data import read_manifest

    out = tmp_path / "aug"
    base = ["augment", "--model", str(generate_dir), "--data", str(sample_data / "pcam/valid"), "--limit-real", "2",
            "--steps", "1", "--guidance", "text=2", "--scale", "image=0.5", "--out", str(out)]
    assert main(base + ["--per-class", "2"]) == 0
    # 96 px PCam references for a 32 px model: one notice per size, and the record says so
    assert capsys.readouterr().err.count("is 96x96 px; resized to the model's 32x32 px") == 1
    params = read_params(out / "0/syn-00001.png")
    assert params["mupd:conditions"]["image"]["resized_from"] == [96, 96]
    assert params["mupd:guidance"] == {"text": 2.0} and params["mupd:scales"] == {"image": 0.5}
    assert sorted(p.name for p in (out / "0").glob("*.png")) == ["syn-00000.png", "syn-00001.png"]
    table = rows(out / "manifest.csv")
    assert len(table) == 4 and {r["label"] for r in table} == {"0", "1"}
    first = next(r for r in table if r["path"] == "1/syn-00001.png")
    assert first["caption"] == "lymph node with metastatic tumour" and first["reference"].endswith(".jpg")
    assert read_params(out / "1/syn-00001.png")["mupd:seed"] == int(first["seed"])
    mtime = (out / "0/syn-00000.png").stat().st_mtime_ns
    assert main(base + ["--per-class", "3"]) == 0  # resume: only the third image of each class is new
    assert (out / "0/syn-00000.png").stat().st_mtime_ns == mtime
    records = read_manifest(out / "manifest.csv")
    assert len(records) == 6 and sorted({r.label for r in records}) == [0, 1]
