"""Streamed training data (``mupd.train.stream.ShardStream``) on shards built from real PCam patches:
world-size and worker independence, resume without reading earlier shards, ``memory://`` = local,
one dihedral element for latents, paired maps and alignment grids alike, float16 alignment targets,
and patch folders encoded once into a cache."""

from __future__ import annotations

import fsspec
import pytest
import torch

from mupd.data.shards import write_shards
from mupd.train.stream import ShardStream

N, SHARD, G = 22, 4, 6  # 6 shards (the last one short), global batch 6


@pytest.fixture(scope="module")
def shard_dir(sample_data, tmp_path_factory):
    """Real PCam patches at 4x4 as 3-channel 'latents'; the paired map and the alignment grid are
    functions of each latent, so any augmentation that treats them differently breaks the relation."""
    from mupd.data.folders import patch_folder
    from mupd.train.data import load_pixels

    records = patch_folder(sample_data / "pcam" / "valid", limit_per_class=N // 2)
    latents = load_pixels([r.image for r in records], 4).float() / 255.0
    samples = []
    for k, r in enumerate(records):
        z = latents[k]
        samples.append({"id": r.id, "label": r.label, "caption": f"class {r.label}", "latent": z,
                        "source_latent": 1.0 - z, "align_patches": z.permute(1, 2, 0).reshape(16, 3),
                        "align_cls": z.mean((1, 2))})
    out = tmp_path_factory.mktemp("stream") / "shards"
    write_shards(out, samples, shard_size=SHARD)
    return out


def _take(stream, k, **kw):
    it = stream.batches(**{"seed": 3, "start": 0, "global_size": G, **kw})
    return [next(it) for _ in range(k)]


def _merge(parts: list[dict]) -> dict:
    """Rank parts of one global batch, reassembled in position order."""
    pos = torch.cat([p["position"] for p in parts])
    order = pos.argsort()
    return {k: torch.cat([p[k] for p in parts])[order] for k in ("position", "latent", "source_latent", "align_patches", "label")}


def test_ranks_union_to_the_one_process_batch_across_epochs(shard_dir):
    stream = ShardStream(shard_dir)
    one = _take(stream, 9)  # 54 positions: more than two epochs of 22
    for world in (2, 3):
        parts = [_take(ShardStream(shard_dir), 9, rank=r, world=world) for r in range(world)]
        for step in range(9):
            merged = _merge([parts[r][step] for r in range(world)])
            for key, value in merged.items():
                assert torch.equal(value, one[step][key]), (world, step, key)
    # every epoch visits every sample once
    seen = torch.cat([b["align_cls"] for b in one])[:N]
    assert len({tuple(row.tolist()) for row in seen}) == N


def test_resume_reads_only_the_shards_it_needs_and_matches(shard_dir):
    full = _take(ShardStream(shard_dir), 6)
    resumed_stream = ShardStream(shard_dir)
    resumed = _take(resumed_stream, 2, start=4 * G)  # positions 24..35, all in epoch 1
    for a, b in zip(full[4:], resumed):
        assert torch.equal(a["position"], b["position"]) and torch.equal(a["latent"], b["latent"])
        assert a["caption"] == b["caption"]
    needed = resumed_stream.order(3).locate(torch.arange(4 * G, 6 * G))[0].unique().tolist()
    touched = resumed_stream.reader.shards_touched
    assert touched == {resumed_stream.shards[s] for s in needed} and len(touched) < len(resumed_stream.shards)


def test_memory_filesystem_equals_local(shard_dir):
    fs = fsspec.filesystem("memory")
    for path in shard_dir.iterdir():
        fs.pipe(f"/mupd-test/shards/{path.name}", path.read_bytes())
    try:
        local, remote = _take(ShardStream(shard_dir), 4, rank=1, world=2), _take(ShardStream("memory://mupd-test/shards"), 4, rank=1, world=2)
        for a, b in zip(local, remote):
            assert a.keys() == b.keys() and a["caption"] == b["caption"]
            assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    finally:
        fs.rm("/mupd-test", recursive=True)


def test_one_dihedral_element_for_latent_source_and_alignment_grid(shard_dir):
    plain = torch.cat([b["latent"] for b in _take(ShardStream(shard_dir, augment=False), 4)])
    batches = _take(ShardStream(shard_dir), 4)
    latent = torch.cat([b["latent"] for b in batches])
    source = torch.cat([b["source_latent"] for b in batches])
    grid = torch.cat([b["align_patches"] for b in batches])
    torch.testing.assert_close(source, 1.0 - latent)
    torch.testing.assert_close(grid, latent.permute(0, 2, 3, 1).reshape(-1, 16, 3), atol=1e-3, rtol=0)  # float16 storage
    changed = (latent != plain).flatten(1).any(1)
    assert 0 < int(changed.sum()) < len(latent)  # most samples are rotated/flipped, the identity also occurs


def test_alignment_targets_are_stored_as_float16_and_read_as_float32(shard_dir):
    stream = ShardStream(shard_dir)
    head, _ = stream.reader.header(stream.shards[0])
    assert head["align_patches"]["dtype"] == "F16" and head["align_cls"]["dtype"] == "F16" and head["latent"]["dtype"] == "F32"
    batch = _take(stream, 1)[0]
    assert batch["align_patches"].dtype == batch["latent"].dtype == torch.float32
    assert "align_patches" in stream.tensors and stream.tensor_shapes["align_patches"] == (16, 3)


def test_worker_processes_do_not_change_the_batches(shard_dir):
    inline = _take(ShardStream(shard_dir), 5, rank=0, world=2)
    workers = _take(ShardStream(shard_dir, workers=2), 5, rank=0, world=2)
    for a, b in zip(inline, workers):
        assert torch.equal(a["position"], b["position"]) and torch.equal(a["latent"], b["latent"]) and a["caption"] == b["caption"]


def test_patch_folder_is_encoded_once_then_streamed(run_config, tiny_vae_dir):
    from mupd.encoders.vae import LatentAutoencoder
    from mupd.train.data import cache_folder, from_folder

    cfg, _ = run_config("cache")
    cfg.data.limit = 8
    vae = LatentAutoencoder.from_pretrained(str(tiny_vae_dir))
    data = from_folder(cfg, vae, keep_pixels=False, progress=False)
    assert isinstance(data, ShardStream) and len(data) == 8 and data.latent_shape == (4, 16, 16)
    shard = cache_folder(cfg, vae) / "shard-00000.safetensors"
    made = shard.stat().st_mtime_ns
    assert set(data.captions) == {"lymph node, normal tissue", "lymph node, metastatic tumour"}
    again = from_folder(cfg, vae, keep_pixels=False, progress=False)
    assert shard.stat().st_mtime_ns == made  # reused, not re-encoded
    a, b = _take(data, 1)[0], _take(again, 1)[0]
    assert torch.equal(a["latent"], b["latent"]) and a["caption"] == b["caption"]


def test_limit_keeps_the_first_samples_in_shard_order(shard_dir):
    stream = ShardStream(shard_dir, limit=7, augment=False)
    assert len(stream) == 7 and stream.sizes[:3] == [4, 3, 0]
    epoch = _take(stream, 1, global_size=7)[0]["align_cls"]
    first = ShardStream(shard_dir).tensors["align_cls"][:7]
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, first.tolist()))


def test_streamed_augmented_training_resumes_bit_exact(shard_dir, tmp_path):
    """4 optimiser steps straight = 2 steps, checkpoint, a new Trainer resuming for 2 more."""
    from mupd.checkpoint import load_tensors
    from mupd.train import TrainConfig
    from mupd.train.loop import Trainer

    def run(name: str, total: int):
        cfg = TrainConfig.from_dict({"preset": "tiny", "output": str(tmp_path / name), "total_images": total, "progress": False,
                                     "deterministic": True, "tensorboard": False, "batch": {"global_size": 6, "per_device": 3},
                                     "data": {"source": "shards", "path": str(shard_dir), "augment": True},
                                     "intervals": {"log": 6, "checkpoint": 0, "preview": 0}})
        Trainer(cfg, device="cpu", resume="auto").fit()
        return load_tensors(tmp_path / name / "checkpoint" / "model" / "model.safetensors")

    straight = run("straight", 24)
    run("resumed", 12)
    resumed = run("resumed", 24)
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
