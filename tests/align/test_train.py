"""``mupd align train`` end to end on real PCam patches and her2st spots, at tiny sizes."""

from __future__ import annotations

import json

import pytest
import torch

from mupd.align.config import preset
from mupd.align.data import load_pairs
from mupd.align.model import AlignModel
from mupd.align.train import load_optimizer, make_optimizer, optimizer_tensors, train_align
from mupd.cli import main
from mupd.encoders import registry
from mupd.errors import MupdError


@pytest.fixture(scope="module")
def pcam(sample_data):
    config = preset("tiny-pcam")
    return config, load_pairs(config, "train")


def test_dry_run_prints_resolved_config(capsys):
    assert main(["align", "train", "tiny-pcam", "--dry-run", "--set", "lr=0.01", "embed_dim=8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lr"] == 0.01 and printed["embed_dim"] == 8 and printed["dataset"] == "pcam"
    assert main(["align", "train", "tiny-pcam", "--dry-run", "--set", "nonsense=1"]) == 2


def test_yaml_config_with_preset_and_overrides(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny-her2st\ntest_sections: [C5]\ntrain_sections: [B4, C2]\nbatch_size: 8\n")
    assert main(["align", "train", str(path), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train_sections"] == ["B4", "C2"] and printed["batch_size"] == 8 and printed["n_genes"] == 32
    path.write_text("preset: tiny-her2st\ntrain_sections: [C5]\n")
    assert main(["align", "train", str(path), "--out", str(tmp_path / "x")]) == 2  # same section on both sides
    assert "both train and test" in capsys.readouterr().err


def test_cli_trains_evaluates_and_registry_loads(sample_data, tmp_path, capsys):
    out = tmp_path / "aligned"
    assert main(["align", "train", "tiny-pcam", "--out", str(out), "--no-progress", "--set", "total_samples=16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"image->text", "zero_shot_image", "linear_probe_image"} <= set(metrics)
    assert 0.0 <= metrics["zero_shot_image"] <= 1.0
    for name in ("config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        assert (out / name).exists()
    capsys.readouterr()
    assert main(["align", "evaluate", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["zero_shot_image"] == metrics["zero_shot_image"]
    image = registry.build("image", "mupd-aligned", path=out)
    text = registry.build("text", "mupd-aligned", path=out)
    assert image.width == 32 and text.width == 32 and not any(p.requires_grad for p in image.parameters())
    patches = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    tokens, mask = image.encode(patches)
    assert tokens.shape == (2, 4, 32) and mask.all()
    sim = image.embed(patches) @ text.embed(["metastatic tumour", "normal lymph node"]).T
    assert sim.shape == (2, 2) and sim.abs().max() <= 1.0 + 1e-5


def test_resume_continues_exactly(pcam, tmp_path):
    config, data = pcam
    straight = train_align(preset("tiny-pcam", total_samples=48), tmp_path / "a", progress=False, data=data)
    train_align(preset("tiny-pcam", total_samples=32), tmp_path / "b", progress=False, data=data)
    resumed = train_align(preset("tiny-pcam", total_samples=48), tmp_path / "b", resume=True, progress=False, data=data)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    with pytest.raises(MupdError, match="different config"):
        train_align(preset("tiny-pcam", lr=0.5), tmp_path / "b", resume=True, progress=False, data=data)
    with pytest.raises(MupdError, match="no checkpoint"):
        train_align(config, tmp_path / "empty", resume=True, progress=False, data=data)


def test_optimizer_state_round_trips_without_pickle(pcam):
    config, data = pcam
    from mupd.align.train import build_model

    model = build_model(config, data)
    opt = make_optimizer(model, config)
    model.embed(data.batch(range(4)))["image"].sum().backward()
    opt.step()
    tensors, meta = optimizer_tensors(opt)
    json.dumps(meta)  # scalars are plain JSON
    fresh = make_optimizer(model, config)
    load_optimizer(fresh, tensors, meta)
    a, b = opt.state_dict(), fresh.state_dict()
    for index, entry in a["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(torch.as_tensor(value).float(), torch.as_tensor(b["state"][index][key]).float())


def test_missing_or_damaged_checkpoints_name_the_fix(tmp_path, pcam):
    with pytest.raises(MupdError, match="mupd align train"):
        registry.build("image", "mupd-aligned", path=tmp_path / "nowhere")
    with pytest.raises(MupdError, match="mupd align train"):
        registry.build("text", "mupd-aligned")
    config, data = pcam
    out = tmp_path / "run"
    train_align(preset("tiny-pcam", total_samples=16), out, progress=False, data=data)
    with pytest.raises(MupdError, match="not 'rna'"):
        registry.build("rna", "mupd-aligned", path=out)
    blob = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(MupdError, match="truncated"):
        AlignModel.from_pretrained(out)


def test_her2st_image_rna_held_out_section(sample_data, tmp_path):
    config = preset("tiny-her2st", total_samples=32)
    train = load_pairs(config, "train")
    test = load_pairs(config, "test", vocabulary=train.vocabulary)
    assert set(train.groups) == {"B4"} and set(test.groups) == {"C5"}
    model = train_align(config, tmp_path / "st", progress=False, data=train)
    from mupd.align.evaluate import evaluate_pairs

    metrics = evaluate_pairs(model, train, test)
    assert 0.0 <= metrics["image->rna"]["R@10"] <= 1.0 and metrics["image->rna"]["chance@10"] == 10 / len(test)
    rna = registry.build("rna", "mupd-aligned", path=tmp_path / "st")
    assert rna.gene_vocabulary.genes == train.vocabulary.genes
    assert rna.embed(test.items["rna"][:3]).shape == (3, 16)
