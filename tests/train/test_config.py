"""TrainConfig: YAML <-> dataclass round trip, presets, overrides, validation, --dry-run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from mupd.errors import MupdError
from mupd.train import TrainConfig
from mupd.train.cli import dotted_to_set
from mupd.train.config import PRESETS
from mupd.train.schedule import lr_at


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_yaml_round_trip_every_preset(preset, tmp_path):
    cfg = TrainConfig.from_preset(preset, conditions={"text": {"name": "hashed-words", "kwargs": {"width": 64}}})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = TrainConfig.from_yaml(path)
    assert again == cfg
    assert isinstance(again.optim.betas, tuple) and again.conditions["text"].kwargs == {"width": 64}
    assert yaml.safe_load(again.to_yaml()) == cfg.to_dict()


def test_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\noptim: {lr: 2.0e-4}\ndata: {captions: {0: normal, 1: tumour}}\n")
    cfg = TrainConfig.from_yaml(path, overrides=["optim.lr=3e-4", "model.preset=S/2", "batch.per_device=4"])
    assert cfg.optim.lr == 3e-4 and cfg.model.preset == "S/2" and cfg.batch.per_device == 4
    assert cfg.data.captions == {"0": "normal", "1": "tumour"}  # YAML int keys become strings
    assert cfg.batch.global_size == PRESETS["tiny"]["batch"]["global_size"]  # untouched preset value
    assert cfg.accumulation_steps(world_size=2) == 1 and cfg.accumulation_steps(world_size=1) == 2
    with pytest.raises(MupdError, match="not divisible"):
        cfg.accumulation_steps(world_size=3)
    with pytest.raises(MupdError, match=r"unknown key\(s\) \['lrr'\] in config.optim"):
        TrainConfig.from_yaml(path, overrides=["optim.lrr=1"])
    with pytest.raises(MupdError, match="must be a number"):
        TrainConfig.from_yaml(path, overrides=["optim.lr=fast"])
    with pytest.raises(MupdError, match="schedule.kind"):
        TrainConfig.from_yaml(path, overrides=["schedule.kind=linear"]).validate()
    with pytest.raises(MupdError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    assert dotted_to_set(["cfg.yaml", "--optim.lr", "1e-3", "--model.preset=B/2", "--dry-run"]) == [
        "cfg.yaml", "--set", "optim.lr=1e-3", "--set", "model.preset=B/2", "--dry-run"]


def test_lr_schedule_counts_images():
    from mupd.train.config import ScheduleSection

    cosine = ScheduleSection(kind="cosine", warmup_images=100, min_lr_ratio=0.1)
    assert lr_at(0, 1.0, cosine, 1100) == pytest.approx(0.01)
    assert lr_at(99, 1.0, cosine, 1100) == pytest.approx(1.0)
    assert lr_at(600, 1.0, cosine, 1100) == pytest.approx(0.55)
    assert lr_at(1100, 1.0, cosine, 1100) == pytest.approx(0.1)
    assert lr_at(5000, 1.0, ScheduleSection(), 1100) == 1.0


def test_cli_dry_run_prints_resolved_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\noutput: runs/x\n")
    out = subprocess.run([sys.executable, "-m", "mupd", "train", str(path), "--optim.lr", "5e-4", "--set", "model.preset=B/2", "--dry-run"],
                         capture_output=True, text=True, check=True).stdout
    resolved = TrainConfig.from_dict(yaml.safe_load(out))
    assert resolved.optim.lr == 5e-4 and resolved.model.preset == "B/2" and resolved.output == "runs/x"
    bad = subprocess.run([sys.executable, "-m", "mupd", "train", str(path), "--optim.nope", "1", "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "optim" in bad.stderr and "Traceback" not in bad.stderr
    # the model's own fields are checked at the dry run too, not once the data has loaded
    typo = subprocess.run([sys.executable, "-m", "mupd", "train", str(path), "--set", "model.overrides.depthh=3", "--dry-run"],
                          capture_output=True, text=True)
    assert typo.returncode == 2 and "unknown MuPDConfig keys ['depthh']" in typo.stderr and "Traceback" not in typo.stderr
    with pytest.raises(MupdError, match="conv_mlp must be true or false"):
        TrainConfig.from_yaml(path, overrides=["model.overrides.conv_mlp=maybe"]).validate()
    assert TrainConfig.from_yaml(path, overrides=["model.overrides.conv_mlp=true"]).validate().model.overrides == {"conv_mlp": True}


def test_shard_urls_pass_the_path_check_when_fsspec_knows_the_protocol(tmp_path):
    from mupd.train.cli import check_config_paths

    cfg = TrainConfig.from_dict({"preset": "tiny", "data": {"source": "shards", "path": "memory://bucket/shards"}})
    check_config_paths(cfg)  # no local existence check for object storage
    bad = TrainConfig.from_dict({"preset": "tiny", "data": {"source": "shards", "path": "nosuchfs://bucket/shards"}})
    with pytest.raises(MupdError, match=r"data.path: nosuchfs://bucket/shards: no file system for 'nosuchfs://'"):
        check_config_paths(bad)
    local = TrainConfig.from_dict({"preset": "tiny", "data": {"source": "shards", "path": str(tmp_path / "missing")}})
    with pytest.raises(MupdError, match="does not exist"):
        check_config_paths(local)
