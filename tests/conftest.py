"""Shared fixtures. Tests run offline on the CPU; real sample data comes from ../shared/data
(or $MUPD_SAMPLE_DATA) and tests that need it skip with a reason when it is absent."""

from __future__ import annotations

import pytest
import torch

from mupd.settings import _SET_BY_US, sample_data_dir

# The models here are tiny, so intra-op threads only add OpenMP spin-waiting (several times slower on
# a shared 2-core machine); one thread also makes fixtures of any scope bit-reproducible.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_data():
    path = sample_data_dir()
    if path is None:
        pytest.skip("real sample data not found: set MUPD_SAMPLE_DATA or put it at ../shared/data")
    return path


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seed 0 per test; back to one thread after a test whose code picked its own (the demo)."""
    torch.manual_seed(0)
    yield
    torch.set_num_threads(1)
    _SET_BY_US["auto"] = False  # a CLI test's automatic threads must not retune later tests


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory):
    """A tiny random timm ViT (32 px, 4x4 patches of 8 px) saved as a local alignment encoder."""
    timm = pytest.importorskip("timm")
    folder = tmp_path_factory.mktemp("vit") / "vit"
    args = dict(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    timm.models.save_for_hf(vit, str(folder), model_args=args, safe_serialization=True)
    return folder
