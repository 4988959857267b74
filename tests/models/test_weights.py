"""save_pretrained / from_pretrained and EMA: bit-exact round trips, clear errors on damaged folders."""

from __future__ import annotations

import json

import pytest
import torch

from mupd import MuPD, MupdError
from mupd.models.testing import perturb_zero_init_
from mupd.train.ema import EMA


def make():
    return perturb_zero_init_(
        MuPD.from_preset("tiny", modalities=("text", "rna"), cond_dims={"text": 32}, vector_modalities={"rna": 9}, cls_dim=6, repa_block=2)
    )


def test_round_trip_is_bit_exact(tmp_path):
    model = make()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    ema.update(model)
    model.save_pretrained(tmp_path / "ckpt", ema=ema)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "ema.safetensors", "model.safetensors"]
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["format"] == "mupd-model" and "mupd_version" in config and config["vector_modalities"] == {"rna": 9}

    raw = MuPD.from_pretrained(tmp_path / "ckpt", use_ema=False)
    averaged = MuPD.from_pretrained(tmp_path / "ckpt")
    assert raw.config == model.config
    for (k, a), b in zip(model.state_dict().items(), raw.state_dict().values()):
        assert torch.equal(a, b), k
    for a, e in zip(averaged.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, e)
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    c = {"text": torch.randn(2, 3, 32), "rna": torch.randn(2, 9)}
    model.eval()
    assert torch.equal(model(x, t, c), raw(x, t, c))
    assert not averaged.training


def test_truncated_weights_raise(tmp_path):
    make().save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(MupdError, match="model.safetensors"):
        MuPD.from_pretrained(tmp_path / "m")


def test_mismatched_weights_name_the_tensor(tmp_path):
    make().save_pretrained(tmp_path / "m")
    config_file = tmp_path / "m" / "config.json"
    config = json.loads(config_file.read_text())
    config["cond_dims"]["text"] = 48
    config_file.write_text(json.dumps(config))
    with pytest.raises(MupdError, match="cond_embedders.text.proj.weight"):
        MuPD.from_pretrained(tmp_path / "m")
    config["vector_modalities"] = {}
    config["cond_dims"]["text"] = 32
    config_file.write_text(json.dumps(config))
    with pytest.raises(MupdError, match="unexpected tensors"):
        MuPD.from_pretrained(tmp_path / "m")


def test_bad_config_json(tmp_path):
    make().save_pretrained(tmp_path / "m")
    config_file = tmp_path / "m" / "config.json"
    config = json.loads(config_file.read_text())
    config["flash"] = True
    config_file.write_text(json.dumps(config))
    with pytest.raises(MupdError, match=r"config.json: unknown MuPDConfig keys \['flash'\]"):
        MuPD.from_pretrained(tmp_path / "m")
    config_file.write_text("{ not json")
    with pytest.raises(MupdError, match="not valid JSON"):
        MuPD.from_pretrained(tmp_path / "m")
    with pytest.raises(MupdError, match="not a folder"):
        MuPD.from_pretrained(tmp_path / "nothing")


def test_ema_matches_hand_computed_average():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()(torch.randn(8, 3))  # moves the BatchNorm running stats (buffers are copied)
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, 0.9 * start["0.weight"] + 0.1 * model[0].weight)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert all(not p.requires_grad for p in ema.module.parameters())
    state = ema.state_dict()
    other = EMA(model, decay=0.5)
    other.load_state_dict(state)
    assert other.decay == 0.9 and other.num_updates == 1
    assert torch.equal(other.module[0].weight, ema.module[0].weight)
    warm = EMA(model, decay=0.9999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)
    with pytest.raises(MupdError):
        EMA(model, decay=1.5)
