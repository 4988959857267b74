"""Alignment targets encoded once (``mupd data encode`` with an alignment encoder) on real PCam
patches: stored as float16, equal to the trainer's in-memory targets, streamed to a real Trainer."""

from __future__ import annotations

import pytest
import torch

from mupd.data.encode import EncodeJob, encode_dataset
from mupd.data.shards import ShardReader, read_index


@pytest.fixture(scope="module")
def encoded(sample_data, tmp_path_factory, tiny_vit_dir):
    import shutil

    from mupd.encoders.vae import LatentAutoencoder

    root = tmp_path_factory.mktemp("align")
    LatentAutoencoder.tiny().save_pretrained(root / "vae")
    shutil.copytree(tiny_vit_dir, root / "vit")
    job = EncodeJob(str(sample_data / "pcam" / "valid"), str(root / "vae"), str(root / "shards"), shard_size=6, size=32,
                    batch_size=4, limit=5, align_encoder="timm", encoder_kwargs={"align": {"path": str(root / "vit")}})
    encode_dataset(job, progress=False)
    return root


def test_targets_are_float16_and_match_the_in_memory_ones(encoded, sample_data):
    from mupd.encoders import registry
    from mupd.train.alignment import encoder_targets
    from mupd.train.data import load_pixels
    from mupd.train.stream import ShardStream

    index = read_index(encoded / "shards")
    assert index["n"] == 10 and len(index["align_cls_stats"]["std"]) == 24
    head, _ = ShardReader(encoded / "shards").header("shard-00000")
    assert head["align_patches"]["dtype"] == "F16" and head["align_patches"]["shape"] == [6, 16, 24]
    stream = ShardStream(encoded / "shards")
    ids = [i for name in stream.shards for i in stream.reader.meta(name)["ids"]]
    pixels = load_pixels([sample_data / "pcam" / "valid" / f"{i}.jpg" for i in ids], 32)
    vit = registry.build("image", "timm", path=str(encoded / "vit")).eval()
    patches, cls = encoder_targets(vit, pixels, progress=False)  # what the trainer computes in memory
    torch.testing.assert_close(stream.tensors["align_patches"], patches, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(stream.tensors["align_cls"], cls, atol=2e-2, rtol=0)  # float16 raw CLS, then standardised


def test_trainer_streams_shards_with_alignment_targets(encoded, tmp_path):
    from mupd.train import TrainConfig
    from mupd.train.loop import Trainer
    from mupd.train.stream import ShardStream

    cfg = TrainConfig.from_dict({
        "preset": "tiny", "output": str(tmp_path / "run"), "progress": False, "total_images": 16, "tensorboard": False,
        "data": {"source": "shards", "path": str(encoded / "shards")}, "intervals": {"log": 8, "preview": 0},
        "align": {"encoder": "timm", "path": str(encoded / "vit"), "block": 1, "cls_weight": 0.1, "projector_dim": 16},
    })
    trainer = Trainer(cfg, device="cpu", resume=False)
    assert isinstance(trainer.data, ShardStream) and trainer.model.config.cls_dim == 24
    result = trainer.fit()
    assert result["images_seen"] == 16 and all(torch.isfinite(torch.tensor(result["losses"])))


def test_cli_writes_the_same_targets(encoded, sample_data, tmp_path):
    from mupd.cli import main

    assert main(["data", "encode", str(sample_data / "pcam" / "valid"), "--vae", str(encoded / "vae"), "--out", str(tmp_path / "s"),
                 "--size", "32", "--limit", "5", "--shard-size", "6", "--no-progress", "--align-encoder", "timm",
                 "--encoder-arg", f"align.path={encoded / 'vit'}"]) == 0
    ours, theirs = ShardReader(tmp_path / "s"), ShardReader(encoded / "shards")
    assert ours.header("shard-00000")[0]["align_patches"] == theirs.header("shard-00000")[0]["align_patches"]
    assert read_index(tmp_path / "s")["align_cls_stats"] == read_index(encoded / "shards")["align_cls_stats"]
    assert main(["data", "encode", str(sample_data / "pcam" / "valid"), "--vae", str(encoded / "vae"), "--out", str(tmp_path / "x"),
                 "--align-encoder", "no-such-encoder"]) == 2  # refused before anything loads
