"""Feature extractors by name: the labelled random Inception fallback, local Inception weights
(weights_only loading, never a download), registry image encoders, colour statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mupd.errors import MupdError
from mupd.metrics.features import RANDOM_WARNING, build_extractor, find_inception_weights


@pytest.fixture(scope="module")
def pcam_batch():
    from mupd.settings import sample_data_dir

    if sample_data_dir() is None:
        pytest.skip("real sample data not found")
    from mupd.metrics.images import load_image_set

    return load_image_set(sample_data_dir() / "pcam" / "valid", max_images=3).images


def test_random_inception_is_labelled_deterministic_and_loads_as_local_weights(pcam_batch, tmp_path, monkeypatch):
    monkeypatch.delenv("MUPD_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    assert find_inception_weights() is None
    fallback = build_extractor("auto")
    assert fallback.name == "random-inception" and fallback.warning == RANDOM_WARNING
    assert "not the pretrained network" in fallback.describe()["warning"]
    a = fallback.extract(pcam_batch[:2])
    assert a.shape == (2, 2048) and np.isfinite(a).all() and (a[0] != a[1]).any()
    again = build_extractor("random-inception").module.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in fallback.module.state_dict().items())  # fixed seed
    # the real thing: a local file in torch-fidelity's layout, found via $MUPD_INCEPTION_WEIGHTS (folder)
    weights = tmp_path / "w" / "pt_inception-2015-12-05-6726825d.pth"
    weights.parent.mkdir()
    torch.save(fallback.module.state_dict(), weights)
    monkeypatch.setenv("MUPD_INCEPTION_WEIGHTS", str(weights.parent))
    real = build_extractor("auto")
    assert real.name == "inception" and real.warning is None and real.info["weights"] == str(weights)
    assert np.allclose(real.extract(pcam_batch[:2]), a)  # same weights -> same features


def test_bad_inception_weights_are_refused(tmp_path, monkeypatch):
    truncated = tmp_path / "pt_inception-2015-12-05-bad.pth"
    truncated.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(MupdError, match="not a readable Inception"):
        build_extractor("inception", weights=truncated)

    import pathlib

    pickled = tmp_path / "evil.pth"  # a pickle naming an arbitrary class must not be unpickled
    torch.save({"x": pathlib.PurePosixPath("x")}, pickled)
    with pytest.raises(MupdError, match="not a readable Inception"):
        build_extractor("inception", weights=pickled)
    monkeypatch.setenv("MUPD_INCEPTION_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(MupdError, match="MUPD_INCEPTION_WEIGHTS"):
        find_inception_weights()


def test_registry_image_encoder_as_feature_space(pcam_batch, tmp_path):
    timm = pytest.importorskip("timm")
    from mupd.encoders import registry

    args = dict(img_size=32, patch_size=16, embed_dim=24, depth=1, num_heads=2)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    timm.models.save_for_hf(model, str(tmp_path / "vit"), model_args=args, safe_serialization=True)
    extractor = build_extractor("timm", path=tmp_path / "vit")
    features = extractor.extract(pcam_batch)
    expected = registry.build("image", "timm", path=tmp_path / "vit").embed(pcam_batch)
    assert features.shape == (3, 24) and np.allclose(features, expected.numpy(), atol=1e-6)
    assert "32x32" in extractor.preprocessing["resize"] and extractor.name == "timm"
    with pytest.raises(MupdError, match="unknown"):
        build_extractor("no-such-encoder")


def test_colour_stats_and_input_checks(pcam_batch):
    extractor = build_extractor("colour-stats")
    features = extractor.extract(pcam_batch)
    assert features.shape == (3, 30) and extractor.warning
    assert features[:, 0] == pytest.approx(pcam_batch[:, 0].double().mean((1, 2)).numpy() / 255)  # mean red
    with pytest.raises(MupdError, match="uint8"):
        extractor.extract(pcam_batch.float())
