"""The evaluation job end to end on real PCam patches: metrics.json, report.html, refusals, CLI."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from mupd.cli import main
from mupd.errors import MupdError
from mupd.metrics import evaluate


class _Sources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.scripts, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src"))
        if tag == "script":
            self.scripts.append(attrs.get("src"))
        if tag == "link":
            self.links.append(attrs.get("href"))


@pytest.fixture(scope="module")
def pcam_sets(sample_data, tmp_path_factory):
    """60 real PCam patches (valid) and 60 'generated' ones: other real patches (train), written as PNG
    with the mupd:* metadata a pipeline writes, in class folders."""
    from mupd.metrics.images import load_image_set
    from mupd.pipelines.pngmeta import save_png

    root = tmp_path_factory.mktemp("eval")
    fake = load_image_set(sample_data / "pcam" / "train", max_images=60, seed=5)
    for i, (image, label) in enumerate(zip(fake.images, fake.labels)):
        params = {"model": "demo@123", "conditions": {"text": f"class {label}"}, "seed": i, "sampler": "heun",
                  "steps": 8, "guidance": 2.0}
        save_png(Image.fromarray(image.permute(1, 2, 0).numpy()), root / "fake" / label / f"{i:03d}.png", params)
    return sample_data / "pcam" / "valid", root / "fake", root


def test_evaluate_writes_metrics_and_a_complete_report(pcam_sets):
    real, fake, root = pcam_sets
    out = root / "out"
    result = evaluate(real, fake, out, metrics="fid,kid,prdc,cells,fewshot,retrieval", features="colour-stats",
                      max_images=60, n_resamples=30, shots=(1, 5), seeds=2, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["fid"]["value"] == pytest.approx(result["fid"]["value"])
    assert saved["real"]["n"] == 60 and saved["fake"]["n"] == 60
    assert saved["feature_extractor"]["name"] == "colour-stats" and saved["warnings"]
    assert saved["bootstrap"]["resamples"] == 30
    for name in ("fid", "kid"):
        assert saved[name]["low"] <= saved[name]["value"] <= saved[name]["high"]
    assert 0 <= saved["prdc"]["precision"]["value"] <= 1
    assert saved["cells"]["nuclei"]["real"] > 100  # PCam patches hold ~10-40 nuclei each
    assert saved["sampler"]["keys"]["mupd:sampler"]["values"] == [{"value": "heun", "images": 60}]
    assert saved["sampler"]["keys"]["mupd:seed"]["distinct"] == 60
    assert set(saved["fewshot"]["results"]["5"]) == {"real", "real+synthetic"}
    assert 0 <= saved["retrieval"]["generated_to_real"]["recall@1"]["value"] <= 1
    # the report: every referenced image exists, nothing loads from elsewhere
    parser = _Sources()
    parser.feed((out / "report.html").read_text())
    assert len(parser.images) >= 8 and not parser.scripts and not parser.links
    for src in parser.images:
        assert "://" not in src and (out / src).is_file(), src
        with Image.open(out / src) as im:
            assert im.size[0] > 50 and im.size[1] > 50
    # a second run reuses the cached features (resume) and gives the same numbers
    again = evaluate(real, fake, out, metrics="fid", features="colour-stats", max_images=60, n_resamples=30, progress=False, report=False)
    assert again["fid"] == result["fid"]


def test_evaluate_refuses_incomparable_or_small_sets(pcam_sets, tmp_path):
    real, fake, _ = pcam_sets
    with pytest.raises(MupdError, match="at least 50"):
        evaluate(real, fake, metrics="fid", features="colour-stats", max_images=20, progress=False)
    small = evaluate(real, fake, metrics="fid", features="colour-stats", max_images=20, min_samples=20, n_resamples=5, progress=False)
    assert small["fid"]["value"] >= 0
    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):
        Image.fromarray(np.full((128, 128, 3), 200, np.uint8)).save(big / f"{i}.png")
    with pytest.raises(MupdError, match="--image-size"):
        evaluate(real, big, metrics="cells", max_images=3, progress=False)
    # feature files recorded with different extractors
    np.savez(tmp_path / "a.npz", features=np.zeros((60, 4)), extractor=np.array("inception"))
    np.savez(tmp_path / "b.npz", features=np.ones((60, 4)), extractor=np.array("uni"))
    with pytest.raises(MupdError, match="same --features"):
        evaluate(tmp_path / "a.npz", tmp_path / "b.npz", metrics="fid", progress=False)
    with pytest.raises(MupdError, match="unknown metric"):
        evaluate(real, fake, metrics="fid,sharpness")


def test_cli_evaluate_and_its_errors(pcam_sets, tmp_path, capsys):
    real, fake, _ = pcam_sets
    out = tmp_path / "cli"
    code = main(["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(out), "--metrics", "fid,kid,prdc",
                 "--features", "colour-stats", "--max-images", "50", "--bootstrap", "20"])
    assert code == 0 and (out / "metrics.json").is_file() and (out / "report.html").is_file()
    assert '"fid"' in capsys.readouterr().out
    code = main(["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(out), "--metrics", "fid",
                 "--features", "colour-stats", "--max-images", "10"])
    assert code == 2 and "--min-samples" in capsys.readouterr().err
