"""vary / stain / translate on real DeepLIIF IHC panels and PCam patches, tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mupd.errors import MupdError
from mupd.pipelines.inputs import image_to_tensor


@pytest.fixture(scope="module")
def ihc(sample_data):
    """The Ki67 IHC panel (first 512x512 of 6) of a real DeepLIIF test image, cropped to 72x100."""
    panel = Image.open(sample_data / "stains/deepliif/Sample_Dataset/test/22_2.png").convert("RGB")
    return panel.crop((100, 100, 200, 172))


@pytest.fixture(scope="module")
def patch(sample_data):
    return Image.open(sorted((sample_data / "pcam/valid/0").iterdir())[0]).convert("RGB").crop((32, 32, 64, 64))


def test_stain_readout_over_tiles_gives_a_multichannel_target(stainer, ihc):
    out = stainer.stain(ihc, method="readout", overlap=8, output_type="np")
    assert out.images.shape == (1, 72, 100, 2)  # 2-channel target autoencoder (e.g. DAPI + Ki67 IF)
    params = out.parameters[0]
    assert params["mupd:sampler"] == "readout" and params["mupd:tile"] == 32 and params["mupd:overlap"] == 8
    pil = stainer.stain(ihc, method="readout", overlap=8)
    assert pil[0].mode == "L" and pil[0].size == (200, 72)  # channels side by side


def test_stain_on_one_tile_equals_the_direct_readout(stainer, ihc):
    from mupd.flow import readout

    tile = ihc.crop((0, 0, 32, 32))
    out = stainer.stain(tile, method="readout", output_type="pt")
    with torch.no_grad():
        extra = stainer.source_vae.encode(image_to_tensor([tile]))
        direct = stainer.vae.decode(readout(stainer.model, {}, extra, (1, 4, 8, 8)))
    expected = ((direct.clamp(-1, 1) + 1) * 127.5).round() / 255
    assert torch.allclose(out.images, expected, atol=1 / 255 + 1e-6)


def test_stain_sampling_is_seeded(stainer, ihc):
    a = stainer.stain(ihc, method="sample", steps=2, seed=4, output_type="np").images
    b = stainer.stain(ihc, method="sample", steps=2, seed=4, output_type="np").images
    c = stainer.stain(ihc, method="sample", steps=2, seed=5, output_type="np").images
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_translate_paired_and_unpaired(stainer, gen, ihc):
    paired = stainer.translate(ihc, steps=2, seed=0, output_type="np")
    assert paired.images.shape == (1, 72, 100, 2) and paired.parameters[0]["mupd:mode"] == "sample"
    # unpaired (SDEdit through a generator): strength 0 is the target autoencoder's reconstruction
    keep = gen.translate(ihc, strength=0.0, overlap=8, output_type="pt")
    with torch.no_grad():
        recon = tiled_reconstruction(gen, ihc)
    assert torch.allclose(keep.images[0], recon, atol=1 / 255 + 1e-6)
    moved = gen.translate(ihc, strength=0.6, steps=4, seed=0, output_type="pt")
    assert moved.parameters[0]["mupd:strength"] == 0.6 and not torch.equal(moved.images, keep.images)
    with pytest.raises(MupdError, match="strength must be in"):
        gen.translate(ihc, strength=1.5)
    with pytest.raises(MupdError, match="only the unpaired recipe"):
        gen.translate(ihc, method="readout")


def tiled_reconstruction(pipe, image):
    from mupd.pipelines.tiles import tiled_apply

    x = image_to_tensor([image])[0]
    y = tiled_apply(x, lambda t: pipe.vae.decode(pipe.vae.encode(t)).clamp(-1, 1), tile=32, overlap=8)
    return ((y + 1) * 127.5).round() / 255


def test_vary_reference_stream_and_strength(gen, patch):
    new = gen.vary(patch, n=2, steps=2, seed=0, output_type="np")
    assert new.images.shape == (2, 32, 32, 3) and new.parameters[0]["mupd:reference_stream"] is True
    close = gen.vary(patch, strength=0.3, n=1, steps=6, seed=0, output_type="np").images[0]
    far = gen.vary(patch, strength=0.9, n=1, steps=6, seed=0, output_type="np").images[0]
    with torch.no_grad():
        recon = gen.vae.decode(gen.vae.encode(image_to_tensor([patch])))
    recon = ((recon[0].permute(1, 2, 0) + 1) * 127.5).round().numpy() / 255
    # lower strength stays nearer the reference's own reconstruction
    assert np.abs(close - recon).mean() < np.abs(far - recon).mean()
    assert np.array_equal(gen.vary(patch, strength=0.0, n=1, steps=3, seed=0, output_type="np").images[0], recon)


def test_task_mismatch_and_bad_sizes(gen, stainer, ihc, sample_data):
    with pytest.raises(MupdError, match="without source-image input channels"):
        gen.stain(ihc)
    with pytest.raises(MupdError, match="needs a source image"):
        stainer(text="x", n=1, steps=1)
    with pytest.raises(MupdError, match="no reference-image stream"):
        stainer.vary(ihc.crop((0, 0, 32, 32)))
    pcam = sorted((sample_data / "pcam/valid/0").iterdir())[0]  # 96x96: not the model's tile
    out = gen.vary(pcam, strength=0.5, steps=2, seed=0)  # resized to the model's 32 px, said and recorded
    assert out[0].size == (32, 32) and out.notes[0].endswith("is 96x96 px; resized to the model's 32x32 px")
    assert out.parameters[0]["mupd:conditions"]["image"]["resized_from"] == [96, 96]
    with pytest.raises(MupdError, match="stain method"):
        stainer.stain(ihc, method="sdedit")


def test_sdedit_with_every_sampler_is_seeded(gen, patch):
    for sampler in ("euler", "heun", "euler_maruyama"):
        a = gen.vary(patch, strength=0.5, n=2, steps=4, sampler=sampler, seed=3, output_type="np").images
        b = gen.vary(patch, strength=0.5, n=2, steps=4, sampler=sampler, seed=3, output_type="np").images
        assert np.array_equal(a, b) and not np.array_equal(a[0], a[1]), sampler
