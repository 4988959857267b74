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


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Real-set features are cached in the user cache; tests use their own."""
    monkeypatch.setenv("MUPD_CACHE", str(tmp_path / "user-cache"))


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
    big = _copy_images(real / "1", tmp_path / "big", 3, size=128)
    mixed = evaluate(real, big, metrics="cells", max_images=3, n_resamples=5, progress=False)  # 96 vs 128 px
    assert mixed["image_size"]["px"] == 96 and "smallest side" in mixed["image_size"]["rule"]
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


def _counting(calls: list) -> "FeatureExtractor":
    """colour-stats features through a function that records how many images it was given."""
    from mupd.metrics.features import FeatureExtractor, _colour_stats

    def fn(images):
        calls.append(len(images))
        return _colour_stats(images)

    return FeatureExtractor("counting-colour-stats", fn, {"input": "uint8 RGB"})


def _copy_images(src_folder, dst, n, size=None):
    dst.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted(src_folder.iterdir())[:n]):
        with Image.open(path) as im:
            (im.resize((size, size), Image.Resampling.BICUBIC) if size else im.copy()).save(dst / f"{i:03d}.png")
    return dst


def test_evaluate_resizes_sets_of_different_sizes_and_records_the_rule(sample_data, tmp_path, capsys):
    real = _copy_images(sample_data / "pcam" / "valid" / "1", tmp_path / "real", 20)  # 96 px
    fake = _copy_images(sample_data / "pcam" / "train" / "1", tmp_path / "fake", 20, size=64)
    result = evaluate(real, fake, tmp_path / "out", metrics="fid", features="colour-stats", min_samples=20,
                      n_resamples=5, progress=False, report=False)
    assert result["image_size"]["px"] == 64 and result["image_size"]["found"] == {"real": ["96x96"], "fake": ["64x64"]}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["image_size"]["px"] == 64
    assert "resizing every image to 64x64" in capsys.readouterr().err


def test_evaluate_checks_everything_before_extracting(sample_data, tmp_path):
    real = _copy_images(sample_data / "pcam" / "valid" / "0", tmp_path / "real", 20)
    few = _copy_images(sample_data / "pcam" / "train" / "0", tmp_path / "few", 10)
    calls = []
    with pytest.raises(MupdError, match="at least 20 images"):
        evaluate(real, few, metrics="fid", features=_counting(calls), min_samples=20, progress=False)
    with pytest.raises(MupdError, match="pairs generated image i"):
        evaluate(real, few, metrics="similarity", features=_counting(calls), progress=False)
    (few / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(MupdError, match="1 files are not readable images"):
        evaluate(real, few, metrics="prdc", features=_counting(calls), progress=False)
    assert calls == []  # no features were extracted for any of these


def test_cli_input_errors_come_before_torch_loads(sample_data, tmp_path):
    import subprocess
    import sys

    code = ("import sys; from mupd.cli import main; rc = main(['evaluate', '--real', sys.argv[1], '--fake', sys.argv[2], "
            "'--out', sys.argv[3]]); print(rc, 'torch' in sys.modules)")
    real = sample_data / "pcam" / "valid"
    out = subprocess.run([sys.executable, "-c", code, str(real), str(tmp_path / "missing"), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert "missing does not exist" in out.stderr


def test_real_features_are_cached_by_content(sample_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MUPD_CACHE", str(tmp_path / "cache"))
    real = _copy_images(sample_data / "pcam" / "valid" / "0", tmp_path / "real", 20)
    fakes = [_copy_images(sample_data / "pcam" / "train" / str(c), tmp_path / f"fake{c}", 20) for c in (0, 1)]
    calls = []
    kwargs = dict(metrics="fid", min_samples=20, n_resamples=5, progress=False, report=False)
    first = evaluate(real, fakes[0], tmp_path / "out0", features=_counting(calls), **kwargs)
    assert sum(calls) == 40  # real + fake
    second = evaluate(real, fakes[1], tmp_path / "out1", features=_counting(calls), **kwargs)
    assert sum(calls) == 60  # only the new generated set was extracted
    assert list((tmp_path / "cache" / "features").glob("*.npz"))
    again = evaluate(real, fakes[0], tmp_path / "out0", features=_counting(calls), **kwargs)
    assert sum(calls) == 60 and again["fid"]["value"] == first["fid"]["value"] != second["fid"]["value"]
    # a changed real file (new content, size and time) invalidates the cached real features
    with Image.open(fakes[1] / "000.png") as im:
        im.save(real / "000.png")
    evaluate(real, fakes[0], tmp_path / "out0", features=_counting(calls), **kwargs)
    assert sum(calls) == 80
