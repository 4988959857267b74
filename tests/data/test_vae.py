"""LatentAutoencoder: a thin layer over diffusers.AutoencoderKL (or a TAESD-family tiny
autoencoder, see test_taesd.py) with stored latent statistics."""

from __future__ import annotations

import pytest
import torch

from mupd.data import patch_folder
from mupd.data.images import to_tensor
from mupd.encoders.vae import LatentAutoencoder
from mupd.errors import MupdError


@pytest.fixture(scope="module")
def pcam_batch(sample_data):
    records = patch_folder(sample_data / "pcam" / "valid", limit_per_class=3)
    return to_tensor([r.image for r in records], 64)


def test_encode_matches_diffusers_and_standardises(pcam_batch):
    ae = LatentAutoencoder.tiny(block_out_channels=(32, 64, 64))  # 4x down
    assert ae.downsample == 4 and ae.latent_shape(64) == (4, 16, 16)
    raw = ae.vae.encode(pcam_batch).latent_dist.mean
    torch.testing.assert_close(ae.encode_raw(pcam_batch, batch_size=4), raw, rtol=1e-4, atol=1e-5)
    stats = ae.fit_latent_stats(pcam_batch.split(2))
    z = ae.encode(pcam_batch)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    assert len(stats["mean"]) == 4
    # decode inverts the standardisation: same images as diffusers' decode of the raw latents
    torch.testing.assert_close(ae.decode(z), ae.vae.decode(raw).sample.clamp(-1, 1), rtol=1e-3, atol=1e-4)
    tiled = ae.encode(pcam_batch[:1], tile=32)
    assert tiled.shape == z[:1].shape and torch.isfinite(tiled).all()


def test_save_load_round_trip_and_damaged_folders(pcam_batch, tmp_path):
    ae = LatentAutoencoder.tiny()
    ae.fit_latent_stats([pcam_batch])
    ae.save_pretrained(tmp_path / "vae")
    files = sorted(p.name for p in (tmp_path / "vae").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors", "latent_stats.json"]
    back = LatentAutoencoder.from_pretrained(tmp_path / "vae")
    torch.testing.assert_close(back.latent_std, ae.latent_std)
    torch.testing.assert_close(back.encode(pcam_batch), ae.encode(pcam_batch))
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MupdError, match="could not be loaded"):
        LatentAutoencoder.from_pretrained(tmp_path / "vae")
    with pytest.raises(MupdError, match="nothing does not exist"):
        LatentAutoencoder.from_pretrained(str(tmp_path / "nothing"))
    with pytest.raises(MupdError, match="multiple of 2"):
        ae.encode(pcam_batch[:, :, :63, :63])
