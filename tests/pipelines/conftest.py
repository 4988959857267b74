"""Tiny pipeline folders built from real classes (random weights) and real sample data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

IMAGE_SIZE = 32  # 8x8 latents from a 3-block (4x) tiny AutoencoderKL: small pixels keep CPU tests fast
GENES = 24


def tiny_vae(channels: int = 3, seed: int = 0):
    from mupd.encoders.vae import LatentAutoencoder

    return LatentAutoencoder.tiny(in_channels=channels, block_out_channels=(8, 8, 8), norm_num_groups=8,
                                  sample_size=IMAGE_SIZE, seed=seed)


def tiny_image_encoder_folder(folder: Path) -> Path:
    """A 1-block ViT saved in timm's save_for_hf layout (what the 'timm' image adapter loads)."""
    import timm
    from timm.models import save_for_hf

    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    save_for_hf(model, str(folder), model_args=args)
    return folder


def tcga_vocabulary(sample_data: Path):
    """A gene vocabulary fitted on real TCGA-PAAD rows (values already normalised: 'none')."""
    import pandas as pd

    from mupd.data.expression import GeneVocabulary

    table = pd.read_csv(sample_data / "tcga" / "tcga_paad_all_clean.csv.gz", nrows=40, low_memory=False)
    cols = [c for c in table.columns if c.endswith("_rnaseq")][:GENES]
    return GeneVocabulary.fit(table[cols].to_numpy(np.float64), [c[:-7] for c in cols], normalisation="none"), table


@pytest.fixture(scope="session")
def generate_dir(tmp_path_factory, sample_data):
    """A text + RNA + reference-image generator with PCam label captions."""
    from mupd import MuPD
    from mupd.bundle import save_bundle

    root = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    vocab, _ = tcga_vocabulary(sample_data)
    model = MuPD.from_preset("tiny", modalities=("text", "image"), cond_dims={"text": 32, "image": 32},
                             vector_modalities={"rna": GENES}, input_size=8)
    _randomise_gates(model)
    encoder_dir = tiny_image_encoder_folder(root / "vit")
    labels = {"0": "lymph node tissue without tumour", "1": "lymph node with metastatic tumour"}
    save_bundle(root / "generate", model=model, vae=tiny_vae(), vocabulary=vocab,
                encoders={"text": ("hashed-words", {"width": 32}, None), "image": ("timm", {}, encoder_dir)},
                extra={"labels": labels, "task": "generate", "image_size": IMAGE_SIZE})
    return root / "generate"


@pytest.fixture(scope="session")
def stain_dir(tmp_path_factory):
    """A stain fine-tune: 4 extra input channels (source latents), RGB source VAE, 2-channel target VAE,
    and a text stream (e.g. the marker named in words)."""
    from mupd import MuPD
    from mupd.bundle import save_bundle

    root = tmp_path_factory.mktemp("stain")
    torch.manual_seed(1)
    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 32}, input_size=8, extra_in_channels=4)
    _randomise_gates(model)
    save_bundle(root / "stain", model=model, vae=tiny_vae(channels=2, seed=2), source_vae=tiny_vae(seed=3),
                encoders={"text": ("hashed-words", {"width": 32}, None)},
                extra={"task": "stain", "image_size": IMAGE_SIZE, "source_channels": 4})
    return root / "stain"


def _randomise_gates(model) -> None:
    """adaLN-Zero and zero output heads make an untrained model output exactly 0, which would make
    every condition/seed test vacuous; small random weights everywhere stand in for training."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1 and torch.count_nonzero(p) == 0:
                p.normal_(0.0, 0.02)


@pytest.fixture(scope="session")
def make_vae():
    """The tiny autoencoder builder, for tests that assemble their own pipeline folder."""
    return tiny_vae


@pytest.fixture(scope="module")
def gen(generate_dir):
    """The tiny text/RNA/image generate pipeline, loaded once per test module."""
    from mupd.pipelines import Pipeline

    return Pipeline.from_pretrained(generate_dir, device="cpu")


@pytest.fixture(scope="module")
def stainer(stain_dir):
    """The tiny stain pipeline, loaded once per test module."""
    from mupd.pipelines import Pipeline

    return Pipeline.from_pretrained(stain_dir, device="cpu")
