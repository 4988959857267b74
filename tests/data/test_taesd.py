"""TAESD-family latent spaces: the shipped TAEF2 weights load strictly into our module and
reconstruct real PCam at the PSNR its README states; diffusers' AutoencoderTiny round-trips through
a pipeline-style folder; autoencoder arguments are offline by construction."""

from __future__ import annotations

import json
import time

import pytest
import torch

from mupd.data import patch_folder
from mupd.data.images import to_tensor
from mupd.encoders import taesd
from mupd.encoders.taesd import TAEF2_FILES, DiffusersTiny, Taef2, find_taef2
from mupd.encoders.vae import LatentAutoencoder
from mupd.errors import MupdError


@pytest.fixture(scope="module")
def taef2_folder():
    folder = find_taef2(required=False)
    if folder is None:
        pytest.skip("TAEF2 weights not found: set MUPD_MODELS to the folder holding taef2/")
    return folder


@pytest.fixture(scope="module")
def pcam64(sample_data):
    records = patch_folder(sample_data / "pcam" / "valid", limit_per_class=8)
    return to_tensor([r.image for r in records], 64)


def test_taef2_key_names_match_the_shipped_safetensors(taef2_folder):
    from safetensors import safe_open

    model = Taef2()
    for part, name in zip((model.encoder, model.decoder), TAEF2_FILES):
        with safe_open(str(taef2_folder / name), "pt") as f:
            shipped = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        ours = {k: tuple(v.shape) for k, v in part.state_dict().items()}
        assert ours == shipped, name


def test_taef2_reconstructs_real_pcam_at_the_readme_psnr(taef2_folder, pcam64):
    ae = LatentAutoencoder.from_pretrained("taef2")  # the clear name resolves to the offline folder
    assert ae.kind == "taef2" and ae.downsample == 8 and ae.latent_channels == 32 and ae.image_channels == 3
    assert ae.latent_shape(96) == (32, 12, 12)
    raw = ae.encode_raw(pcam64)
    assert raw.shape == (16, 32, 8, 8) and 0.6 < raw.std() < 1.0  # README: raw latent std ~ 0.8
    # these 16 patches give 19.5 dB (per-patch PSNR varies 16-26 dB; the README's 21.8 dB is over 128
    # patches, checked by the slow test below); a wrong block, clamp or [0, 1] mapping falls far below
    assert _psnr(ae, pcam64).mean() > 19.0


def _psnr(ae, images):
    recon = ae.decode(ae.encode(images, batch_size=32), batch_size=32)
    return 10 * torch.log10(4 / ((recon - images) ** 2).mean((1, 2, 3)))  # images in [-1, 1]: peak-to-peak 2


@pytest.mark.slow
@pytest.mark.parametrize("size, readme_psnr", [(64, 21.8), (96, 19.6)])
def test_taef2_psnr_on_128_pcam_patches_matches_the_readme(taef2_folder, sample_data, size, readme_psnr):
    records = patch_folder(sample_data / "pcam" / "valid", limit_per_class=64)
    psnr = _psnr(LatentAutoencoder.from_pretrained(taef2_folder), to_tensor([r.image for r in records], size))
    assert abs(float(psnr.mean()) - readme_psnr) < 0.5


def test_taef2_folder_round_trip_and_damaged_weights(taef2_folder, pcam64, tmp_path):
    ae = LatentAutoencoder.from_pretrained(taef2_folder)
    ae.fit_latent_stats([pcam64])
    ae.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == sorted(["config.json", "latent_stats.json", *TAEF2_FILES])
    assert json.loads((tmp_path / "vae" / "latent_stats.json").read_text())["kind"] == "taef2"
    back = LatentAutoencoder.from_pretrained(tmp_path / "vae")
    assert back.kind == "taef2"
    torch.testing.assert_close(back.encode(pcam64[:2]), ae.encode(pcam64[:2]))
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "vae" / TAEF2_FILES[0]))
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "vae" / TAEF2_FILES[0]))
    with pytest.raises(MupdError, match="could not be loaded as TAEF2 weights"):
        LatentAutoencoder.from_pretrained(tmp_path / "vae")  # strict: an unexpected key is refused


def test_autoencoder_tiny_round_trip_matches_diffusers(pcam64, tmp_path):
    ae = LatentAutoencoder(DiffusersTiny.random(latent_channels=4, width=8, levels=2), std=torch.ones(4))
    assert ae.kind == "taesd" and ae.downsample == 4 and ae.latent_shape(64) == (4, 16, 16)
    raw = ae.vae.net.encode(pcam64).latents  # diffusers itself
    torch.testing.assert_close(ae.encode_raw(pcam64, batch_size=5), raw)
    ae.fit_latent_stats(pcam64.split(8))
    torch.testing.assert_close(ae.decode(ae.encode(pcam64)), ae.vae.net.decode(raw).sample.clamp(-1, 1), rtol=1e-4, atol=1e-4)
    ae.save_pretrained(tmp_path / "pipe" / "vae")
    assert json.loads((tmp_path / "pipe" / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    back = LatentAutoencoder.from_pretrained(tmp_path / "pipe")  # a pipeline folder: uses its vae/
    assert back.kind == "taesd"
    torch.testing.assert_close(back.latent_std, ae.latent_std)
    torch.testing.assert_close(back.encode(pcam64), ae.encode(pcam64))


def test_missing_paths_and_hub_ids_fail_fast_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    start = time.perf_counter()
    for name in ("runs/vae", "stabilityai/sd-vae-ft-ema", str(tmp_path / "missing")):
        with pytest.raises(MupdError, match=f"{name} does not exist.*hub:ORG/NAME"):
            LatentAutoencoder.from_pretrained(name)
    assert time.perf_counter() - start < 2.0  # no hub retries
    with pytest.raises(MupdError, match="not a hub id"):
        LatentAutoencoder.from_pretrained("hub:no-slash")
    with pytest.raises(MupdError, match="downloads are disabled"):
        LatentAutoencoder.from_pretrained("hub:org/name", allow_download=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MupdError, match="not an autoencoder folder"):
        LatentAutoencoder.from_pretrained(tmp_path / "empty")


def test_find_taef2_uses_mupd_models_and_says_where_it_looked(taef2_folder, tmp_path, monkeypatch):
    LatentAutoencoder.from_pretrained(taef2_folder).save_pretrained(tmp_path / "models" / "taef2")
    monkeypatch.setenv("MUPD_MODELS", str(tmp_path / "models"))
    assert find_taef2() == (tmp_path / "models" / "taef2").resolve()
    monkeypatch.setattr(taesd, "models_dirs", lambda: [tmp_path / "nowhere"])
    assert find_taef2(required=False) is None
    with pytest.raises(MupdError, match="MUPD_MODELS"):
        LatentAutoencoder.from_pretrained("taef2")
