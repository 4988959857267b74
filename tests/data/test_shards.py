"""Shard encoding on real PCam patches / DeepLIIF panels: resume, 2 processes, streaming, augmentation."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp

import mupd.data.encode as encode_module
from mupd.data.encode import EncodeJob, encode_dataset
from mupd.data.shards import ShardDataset, dihedral, read_all, read_index, write_shards
from mupd.encoders.vae import LatentAutoencoder
from mupd.errors import MupdError


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "vae"
    LatentAutoencoder.tiny().save_pretrained(path)
    return path


def _job(sample_data, vae_dir, out, **kw) -> EncodeJob:
    base = dict(shard_size=8, size=32, batch_size=4, limit=10, caption_template="pcam", text_encoder="hashed-words",
                encoder_kwargs={"text": {"width": 16}})
    base.update(kw)
    return EncodeJob(str(sample_data / "pcam" / "train"), str(vae_dir), str(out), **base)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def clean_run(sample_data, vae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "shards"
    encode_dataset(_job(sample_data, vae_dir, out), progress=False)
    return out


def test_shards_hold_latents_conditions_and_metadata(clean_run):
    index = read_index(clean_run)
    assert index["n"] == 20 and [s["n"] for s in index["shards"]] == [8, 8, 4]
    assert index["encoders"]["text"]["name"] == "hashed-words" and index["max_tokens"]["text"] > 0
    data = read_all(clean_run)
    assert data["latent"].shape == (20, 4, 16, 16) and data["labels"].tolist() == [0] * 10 + [1] * 10
    assert data["captions"][0] == "lymph node tissue without metastatic tumour"
    assert data["text"].shape[:2] == data["text_mask"].shape and data["text_mask"].any(1).all()


def test_interrupted_encode_resumes_to_identical_bytes(sample_data, vae_dir, clean_run, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    calls = {"n": 0}
    real = encode_module.write_shard

    def killed_after_one(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the job were killed while encoding shard 1
        return real(*args, **kwargs)

    monkeypatch.setattr(encode_module, "write_shard", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(_job(sample_data, vae_dir, out), progress=False)
    monkeypatch.setattr(encode_module, "write_shard", real)
    assert (out / "shard-00000.json").exists() and not (out / "index.json").exists()
    with pytest.raises(MupdError, match="did not finish"):
        ShardDataset(out)
    (out / "shard-00001.safetensors").write_bytes(b"half a shard")  # a partial file without its JSON
    finished = (out / "shard-00000.safetensors").stat().st_mtime_ns
    encode_dataset(_job(sample_data, vae_dir, out), progress=False)
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == finished  # kept, not redone
    assert _files(out) == _files(clean_run)
    # the same folder re-run at another image size is re-encoded, not silently kept
    encode_dataset(_job(sample_data, vae_dir, out, size=64), progress=False)
    assert read_all(out)["latent"].shape[-1] == 32


def _encode_rank(rank: int, job: EncodeJob, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    encode_dataset(job, progress=False)


def test_two_processes_write_the_same_records_as_one(sample_data, vae_dir, clean_run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "shards"
    mp.start_processes(_encode_rank, args=(_job(sample_data, vae_dir, out), port), nprocs=2, start_method="fork")
    one, two = read_all(clean_run), read_all(out)
    assert two["ids"] == one["ids"] and torch.equal(two["labels"], one["labels"])
    torch.testing.assert_close(two["latent"], one["latent"])
    torch.testing.assert_close(two["text"], one["text"])


def test_streaming_splits_ranks_and_workers_without_repeats(clean_run):
    ids = read_all(clean_run)["ids"]
    parts = [[it["id"] for it in ShardDataset(clean_run, rank=r, world_size=3, augment=False)] for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids) and [len(p) for p in parts] == [7, 7, 6]
    even = [len(list(ShardDataset(clean_run, rank=r, world_size=3, drop_last=True))) for r in range(3)]
    assert even == [6, 6, 6]
    ds = ShardDataset(clean_run, rank=1, world_size=2, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    seen = [i for batch in loader for i in batch["id"]]
    assert len(seen) == len(set(seen)) == len(ds) == 10
    ds.set_epoch(1)
    assert [it["id"] for it in ds] != [it["id"] for it in ShardDataset(clean_run, rank=1, world_size=2, seed=3)]


def test_paired_deepliif_shards_augment_source_and_target_alike(sample_data, vae_dir, tmp_path):
    job = EncodeJob(str(sample_data / "stains" / "deepliif" / "Sample_Dataset"), str(vae_dir), str(tmp_path / "s"),
                    shard_size=4, size=32)
    encode_dataset(job, progress=False)
    plain = read_all(tmp_path / "s")
    assert plain["source_latent"].shape == plain["latent"].shape == (2, 4, 16, 16)
    assert not torch.allclose(plain["source_latent"], plain["latent"])
    by_id = {i: k for k, i in enumerate(plain["ids"])}
    for item in ShardDataset(tmp_path / "s", seed=1):
        k = by_id[item["id"]]
        matches = [g for g in range(8) if torch.equal(dihedral(plain["latent"][k], g), item["latent"])]
        assert matches and any(torch.equal(dihedral(plain["source_latent"][k], g), item["source_latent"]) for g in matches)


def test_unreadable_image_stops_or_is_skipped_and_reported(sample_data, vae_dir, tmp_path):
    folder = tmp_path / "patches" / "1"
    folder.mkdir(parents=True)
    for f in sorted((sample_data / "pcam" / "train" / "1").glob("*.jpg"))[:3]:
        shutil.copy(f, folder / f.name)
    bad = sorted(folder.iterdir())[1]
    bad.write_bytes(b"not a jpeg")
    job = EncodeJob(str(tmp_path / "patches"), str(vae_dir), str(tmp_path / "s1"), size=32)
    with pytest.raises(MupdError, match=bad.name):
        encode_dataset(job, progress=False)
    job.out, job.on_error = str(tmp_path / "s2"), "skip"
    encode_dataset(job, progress=False)
    index = read_index(tmp_path / "s2")
    assert index["n"] == 2 and index["skipped"]["unreadable image"] == {"count": 1, "first": [f"1/{bad.stem}"]}


def test_write_shards_from_memory_round_trips(clean_run, tmp_path):
    data = read_all(clean_run)
    samples = [{"id": i, "latent": data["latent"][k], "label": int(data["labels"][k]), "caption": data["captions"][k]}
               for k, i in enumerate(data["ids"][:5])]
    write_shards(tmp_path / "m", samples, shard_size=2, meta={"note": "copied"})
    back = read_all(tmp_path / "m")
    assert back["ids"] == data["ids"][:5] and read_index(tmp_path / "m")["note"] == "copied"
    torch.testing.assert_close(back["latent"], data["latent"][:5])
    with pytest.raises(MupdError, match="unique"):
        write_shards(tmp_path / "d", samples[:2] + samples[:1])
