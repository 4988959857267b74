"""Fixtures for the training tests: a tiny random autoencoder saved to disk and a config writer
for short runs on real PCam patches (subprocess runs read them back from YAML)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import yaml

from mupd.train import TrainConfig


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    from mupd.encoders.vae import LatentAutoencoder

    folder = tmp_path_factory.mktemp("vae") / "vae"
    LatentAutoencoder.tiny(block_out_channels=(16, 32), norm_num_groups=8, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture
def run_config(sample_data, tiny_vae_dir, tmp_path):
    """``run_config(name, **overrides) -> (TrainConfig, yaml path)`` for a text-conditioned tiny run."""

    def make(name: str = "run", **overrides) -> tuple[TrainConfig, Path]:
        data = {
            "preset": "tiny",
            "output": str(tmp_path / name),
            "data": {"path": str(sample_data / "pcam" / "valid"), "limit": 16, "image_size": 32,
                     "captions": {"0": "lymph node, normal tissue", "1": "lymph node, metastatic tumour"}},
            "vae": {"path": str(tiny_vae_dir)},
            "conditions": {"text": {"name": "hashed-words", "kwargs": {"width": 32, "max_length": 8}}},
            "progress": False,
            "deterministic": True,
        }
        cfg = TrainConfig.from_dict(data)
        cfg = cfg.with_overrides([f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in overrides.items()])
        path = tmp_path / f"{name}.yaml"
        path.write_text(cfg.to_yaml())
        return cfg, path

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", MUPD_DEVICE="cpu")
    return env


PYTHON = sys.executable


def align_overrides(vit_dir) -> dict:
    """Config overrides that add representation alignment (projector + CLS) with ``tiny_vit_dir``."""
    return {"align": {"encoder": "timm", "path": str(vit_dir), "block": 1, "weight": 1.0, "cls_weight": 0.1, "projector_dim": 32}}
