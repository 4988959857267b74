"""Patch folders, manifests, captions (real PCam patches and real caption files)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mupd.data import Record, join_captions, patch_folder, read_captions, read_manifest, write_manifest
from mupd.data.images import read_image, to_tensor
from mupd.errors import MupdError


def test_patch_folder_reads_pcam_classes_with_template_captions(sample_data):
    records = patch_folder(sample_data / "pcam" / "train", limit_per_class=4, caption_template="pcam")
    assert [r.label for r in records] == [0] * 4 + [1] * 4
    assert records[0].id.startswith("0/") and records[-1].id.startswith("1/")
    assert records[0].caption == "lymph node tissue without metastatic tumour"
    assert records[-1].caption == "lymph node tissue with metastatic tumour"
    x = to_tensor([r.image for r in records])
    assert x.shape == (8, 3, 96, 96) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_round_trip_keeps_every_field(sample_data, tmp_path, suffix):
    records = patch_folder(sample_data / "pcam" / "valid", limit_per_class=2, caption_template="pcam")
    records[0].expression, records[0].genes = np.array([1.0, 2.0, 3.0]), ["ERBB2", "ESR1", "PGR"]
    records.append(Record("in-memory", np.asarray(read_image(records[1].image)), label=1, meta={"slide_id": "s1"}))
    path = write_manifest(records, tmp_path / f"m{suffix}")
    back = read_manifest(path)
    assert [r.id for r in back] == [r.id for r in records]
    assert [r.label for r in back] == [r.label for r in records]
    assert [r.caption for r in back] == [r.caption for r in records]
    np.testing.assert_array_equal(back[0].expression, [1, 2, 3])
    assert back[0].genes == ["ERBB2", "ESR1", "PGR"] and back[1].expression is None
    assert back[-1].meta["slide_id"] == "s1"
    np.testing.assert_array_equal(np.asarray(read_image(back[-1].image)), records[-1].image)  # PNG is lossless


def test_captions_join_by_id_from_csv_and_json(sample_data, tmp_path):
    gastric = read_captions(sample_data / "text" / "patchgastric_captions.csv")
    assert len(gastric) == 991
    ids = list(gastric)[:3]
    records = [Record(i) for i in ids] + [Record("not-in-file")]
    report = join_captions(records, gastric)
    assert report == {"matched": 3, "unmatched": 1, "first_unmatched": ["not-in-file"]}
    assert records[0].caption == gastric[ids[0]] and records[-1].caption is None
    with pytest.raises(MupdError, match="1 of 4 records have no caption"):
        join_captions(records, gastric, require_all=True)
    arch = read_captions(sample_data / "text" / "arch_books_captions.json")
    assert "0" in arch and "rhabdomyosarcoma" in arch["0"]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "caption": f"text {i}"}) for i in ids))
    assert read_captions(jsonl)[ids[1]] == f"text {ids[1]}"


def test_bad_inputs_name_the_file(sample_data, tmp_path):
    src = sorted((sample_data / "pcam" / "train" / "0").glob("*.jpg"))[:3]
    folder = tmp_path / "pcam" / "0"
    folder.mkdir(parents=True)
    for f in src:
        shutil.copy(f, folder / f.name)
    corrupt = folder / src[0].name
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated JPEG
    records = patch_folder(tmp_path / "pcam")
    with pytest.raises(MupdError, match=src[0].name):
        to_tensor([r.image for r in records])
    with pytest.raises(MupdError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    # a manifest naming a missing file, and one with duplicate ids
    (tmp_path / "m.csv").write_text(f"id,path\na,{src[1]}\nb,{tmp_path / 'gone.jpg'}\n")
    with pytest.raises(MupdError, match="1 image files do not exist"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "d.csv").write_text(f"id,path\na,{src[1]}\na,{src[2]}\n")
    with pytest.raises(MupdError, match="duplicate ids"):
        read_manifest(tmp_path / "d.csv")
    with pytest.raises(MupdError, match="no 'path' column"):
        (tmp_path / "n.csv").write_text("id,file\na,b\n")
        read_manifest(tmp_path / "n.csv")


def test_manifest_in_a_subfolder_keeps_cwd_relative_paths_readable(sample_data, tmp_path, monkeypatch):
    """`mupd data index ../data/pcam/train --out data/pcam.csv`: paths given relative to the current
    folder must still resolve when read back relative to the manifest's own folder."""
    shutil.copytree(sample_data / "pcam" / "valid" / "1", tmp_path / "patches" / "1", dirs_exist_ok=True,
                    ignore=lambda d, names: sorted(names)[3:])
    monkeypatch.chdir(tmp_path)
    records = patch_folder("patches", limit_per_class=2)
    path = write_manifest(records, "data/out/m.csv")
    back = read_manifest(path)
    assert [r.id for r in back] == [r.id for r in records]
    np.testing.assert_array_equal(np.asarray(read_image(back[0].image)), np.asarray(read_image(records[0].image)))
