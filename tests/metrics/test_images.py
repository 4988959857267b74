"""Reading image sets: folders, manifests, corrupt files, sizes, and mupd:* PNG metadata."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mupd.errors import MupdError
from mupd.metrics.images import load_image_set, summarise_metadata


def _write(folder, n, size=16, fmt="png", start=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"im{i:03d}.{fmt}")


def test_folder_is_read_recursively_with_labels(tmp_path):
    _write(tmp_path / "a", 3, fmt="png")
    _write(tmp_path / "b" / "deep", 2, fmt="jpg", start=10)
    s = load_image_set(tmp_path)
    assert len(s) == 5 and s.images.shape == (5, 3, 16, 16) and s.images.dtype.is_floating_point is False
    assert sorted(set(s.labels)) == ["a", "deep"]
    assert load_image_set(tmp_path, max_images=2).images.shape[0] == 2


def test_manifest_csv_with_relative_paths(tmp_path):
    _write(tmp_path / "imgs", 3)
    (tmp_path / "m.csv").write_text("path,label\nimgs/im000.png,x\nimgs/im002.png,y\n")
    s = load_image_set(tmp_path / "m.csv")
    assert s.labels == ["x", "y"] and len(s) == 2
    (tmp_path / "bad.csv").write_text("file\nimgs/im000.png\n")
    with pytest.raises(MupdError, match="'path' column"):
        load_image_set(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("path\nimgs/nope.png\n")
    with pytest.raises(MupdError, match="nope.png"):
        load_image_set(tmp_path / "missing.csv")


def test_corrupt_image_is_named(tmp_path):
    _write(tmp_path, 2)
    (tmp_path / "im999.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(MupdError, match="im999.png"):
        load_image_set(tmp_path)


def test_mixed_sizes_need_image_size(tmp_path):
    _write(tmp_path, 2, size=16)
    _write(tmp_path, 1, size=24, start=5)
    with pytest.raises(MupdError, match="--image-size"):
        load_image_set(tmp_path)
    s = load_image_set(tmp_path, image_size=20)
    assert s.images.shape == (3, 3, 20, 20) and s.preprocessing()["original_sizes"] == ["16x16", "24x24"]


def test_png_metadata_is_collected_and_summarised(tmp_path):
    from mupd.pipelines.pngmeta import save_png

    rng = np.random.default_rng(0)
    for seed in range(4):
        params = {"model": "runs/x@abc", "conditions": {"text": "tumour"}, "seed": seed, "sampler": "heun",
                  "steps": 20 if seed < 3 else 50, "guidance": {"text": 2.0}}
        save_png(Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)), tmp_path / f"g{seed}.png", params)
    s = load_image_set(tmp_path)
    summary = summarise_metadata(s.metadata)
    assert summary["images_with_metadata"] == 4
    assert summary["keys"]["mupd:seed"] == {"count": 4, "distinct": 4, "min": 0, "max": 3}
    assert summary["keys"]["mupd:sampler"]["values"] == [{"value": "heun", "images": 4}]
    assert summary["keys"]["mupd:steps"]["values"] == [{"value": 20, "images": 3}, {"value": 50, "images": 1}]
