"""A REG/CLS model through the pipeline: image i of a call repeats when generated alone with seed
s + i (its CLS-token noise belongs to the image, not to the batch)."""

from __future__ import annotations

import numpy as np
import torch

from mupd import MuPD
from mupd.bundle import save_bundle
from mupd.encoders.vae import LatentAutoencoder
from mupd.models.testing import perturb_zero_init_


def test_cls_model_image_repeats_alone(tmp_path):
    from mupd.pipelines import Pipeline

    model = perturb_zero_init_(MuPD.from_preset("tiny", modalities=(), cls_dim=6, input_size=8), std=0.2)
    vae = LatentAutoencoder.tiny(block_out_channels=(16, 32), norm_num_groups=8, seed=0)
    save_bundle(tmp_path / "p", model=model, vae=vae, extra={"image_size": 16})
    pipe = Pipeline.from_pretrained(tmp_path / "p", device="cpu")
    batch = np.asarray(pipe(n=3, steps=3, seed=5, output_type="np").images)
    alone = np.asarray(pipe(n=1, steps=3, seed=6, output_type="np").images)
    assert batch.std() > 0.01
    np.testing.assert_allclose(alone[0], batch[1], atol=1.5 / 255)
