"""Fine-tuning (added input channels and streams keep the source model's function; freezing) and
representation alignment (the loss falls on real PCam patches with a tiny frozen timm ViT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mupd.encoders import registry
from mupd.errors import MupdError
from mupd.models.mupd import MuPD
from mupd.train import TrainConfig
from mupd.train.finetune import expand_model, finetuned_model, freeze
from mupd.train.loop import Trainer


def _source_model(folder: Path) -> MuPD:
    """A tiny unconditional model with every weight random (a fresh one outputs exact zeros)."""
    model = MuPD.from_preset("tiny", input_size=8, modalities=(), cond_dims={})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(folder / "model", ema=model)
    return model.eval()


def test_added_channels_and_stream_start_from_the_source_function(tmp_path):
    source = _source_model(tmp_path / "src")
    text = registry.build("text", "hashed-words", width=32)
    cfg = TrainConfig.from_dict({"finetune": {"init_from": str(tmp_path / "src"), "extra_in_channels": 4}})
    model = finetuned_model(cfg, latent_shape=(4, 8, 8), extra_in_channels=4, cond_dims={"text": text.width}, cls_dim=None).eval()
    assert model.config.extra_in_channels == 4 and model.config.modalities == ("text",)
    g = torch.Generator().manual_seed(0)
    x, src = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.rand(3, generator=g)
    tokens, mask = text.encode(["lymph node, metastatic tumour"] * 3)
    with torch.no_grad():
        before = source(x, t)
        after = model(torch.cat([x, src], 1), t, {"text": (tokens, mask)})
    assert before.abs().mean() > 0.1  # a non-trivial function
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    # the new channels and stream are live parameters that training can open
    assert model.x_embedder.proj.weight[:, 4:].abs().sum() == 0 and model.x_embedder.proj.weight.requires_grad
    with pytest.raises(MupdError, match="only input channels can grow"):
        expand_model(source, hidden_size=128)


def test_finetune_from_diffusers_dit_weights(tmp_path):
    """format: dit builds the preset, converts the DiT weights and adds the condition streams."""
    from mupd.checkpoint import save_tensors
    from mupd.models.convert import config_from_diffusers, load_dit_weights

    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8,
                                          num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.2)
        for block in dit.transformer_blocks[1:]:  # converted DiT checkpoints share one time embedder
            block.norm1.emb.load_state_dict(dit.transformer_blocks[0].norm1.emb.state_dict())
    save_tensors(tmp_path / "dit.safetensors", dit.state_dict())
    cfg = TrainConfig.from_dict({"model": {"preset": "tiny", "overrides": {"hidden_size": 32, "depth": 2, "num_heads": 4}},
                                 "finetune": {"init_from": str(tmp_path / "dit.safetensors"), "format": "dit"}})
    text = registry.build("text", "hashed-words", width=16)
    model = finetuned_model(cfg, latent_shape=(4, 8, 8), extra_in_channels=0, cond_dims={"text": text.width}, cls_dim=None).eval()
    reference = MuPD(config_from_diffusers(dict(dit.config), out_channels=4)).eval()
    load_dit_weights(reference, dit.state_dict(), "diffusers")
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        expected = reference(x, t)
        assert expected.abs().mean() > 0.1
        torch.testing.assert_close(model(x, t, {"text": text.encode(["tumour"] * 2)}), expected, rtol=0, atol=1e-6)


def test_translation_finetune_trains_with_source_latents_and_freezing(tmp_path, sample_data, tiny_vae_dir):
    _source_model(tmp_path / "src")
    from mupd.encoders.vae import LatentAutoencoder
    from mupd.train.data import encode_pixels, load_pixels

    vae = LatentAutoencoder.from_pretrained(tiny_vae_dir)
    files = sorted((sample_data / "pcam" / "valid" / "1").glob("*.jpg"))[:8]
    pixels = load_pixels(files, 16)
    target = encode_pixels(vae, pixels, progress=False)
    # stand-in for a paired stain: the grey-level version of the same patch (no registered IHC offline)
    grey = pixels.float().mean(1, keepdim=True).expand(-1, 3, -1, -1).round().to(torch.uint8)
    source = encode_pixels(vae, grey, progress=False)
    from mupd.data.shards import write_shards

    write_shards(tmp_path / "shards", [{"id": f"p{i}", "latent": target[i], "source_latent": source[i], "label": 1, "caption": "tumour"}
                                       for i in range(8)], shard_size=5)
    cfg = TrainConfig.from_dict({"preset": "tiny", "output": str(tmp_path / "ft"), "progress": False, "total_images": 16,
                                 "data": {"source": "shards", "path": str(tmp_path / "shards")}, "vae": {"path": str(tiny_vae_dir)},
                                 "batch": {"global_size": 4, "per_device": 4},
                                 "finetune": {"init_from": str(tmp_path / "src"), "freeze": ["blocks.0.*"]}})
    trainer = Trainer(cfg, device="cpu", resume=False)
    data = trainer.data
    assert len(data) == 8 and torch.equal(data.tensors["source_latent"], source)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n.startswith("blocks.0.")}
    assert frozen and all(not p.requires_grad for n, p in trainer.model.named_parameters() if n in frozen)
    # before any step, the fine-tune's velocity equals the source model's
    src = MuPD.from_pretrained(tmp_path / "src" / "model")
    x, t = torch.randn(4, 4, 8, 8), torch.rand(4)
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(torch.cat([x, data.tensors["source_latent"][:4]], 1), t), src(x, t), rtol=0, atol=1e-6)
    trainer.fit()
    for name, p in trainer.model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert trainer.model.x_embedder.proj.weight[:, 4:].abs().sum() > 0  # the source channels learned
    index = json.loads((tmp_path / "ft" / "checkpoint" / "model_index.json").read_text())
    assert index["task"] == "translate" and index["source_channels"] == 4
    with pytest.raises(MupdError, match="match no parameter"):
        freeze(trainer.model, ["no_such_layer.*"])


def test_alignment_loss_falls_on_pcam_with_a_frozen_vit(tmp_path, sample_data, tiny_vae_dir):
    import timm

    args = dict(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    timm.models.save_for_hf(vit, str(tmp_path / "vit"), model_args=args, safe_serialization=True)
    cfg = TrainConfig.from_dict({
        "preset": "tiny", "output": str(tmp_path / "align"), "progress": False, "total_images": 160,
        "data": {"path": str(sample_data / "pcam" / "valid"), "limit": 32, "image_size": 32},
        "vae": {"path": str(tiny_vae_dir)}, "optim": {"lr": 5e-3}, "intervals": {"log": 8, "preview": 160},
        "preview": {"steps": 2, "per_condition": 2},
        "align": {"encoder": "timm", "path": str(tmp_path / "vit"), "block": 1, "weight": 1.0, "cls_weight": 0.1, "projector_dim": 32},
    })
    trainer = Trainer(cfg, device="cpu", resume=False)
    assert trainer.data.tensors["align_patches"].shape == (32, 16, 24)  # 4x4 ViT patch grid, CLS split off
    assert trainer.model.config.repa_block == 1 and trainer.model.config.cls_dim == 24
    trainer.fit()
    from mupd.train.metrics_log import read_metrics

    log = read_metrics(Path(cfg.output))
    align = [r["loss_align"] for r in log]
    cls = [r["loss_cls"] for r in log]
    assert sum(align[-3:]) < 0.9 * sum(align[:3]), align
    assert sum(cls[-3:]) < sum(cls[:3]), cls
    from PIL import Image

    assert Image.open(Path(cfg.output) / "previews" / "000000160.png").height >= 32  # EMA samples, VAE-decoded
    # the projector is part of the resumable state
    assert (Path(cfg.output) / "checkpoint" / "train_state" / "extra.safetensors").exists()


def test_finetune_without_alignment_drops_the_cls_token(tmp_path):
    """A REG/CLS source fine-tuned without the CLS objective trains and samples on the same tokens."""
    source = MuPD.from_preset("tiny", input_size=8, modalities=(), cond_dims={}, cls_dim=16)
    source.save_pretrained(tmp_path / "src" / "model", ema=source)
    cfg = TrainConfig.from_dict({"finetune": {"init_from": str(tmp_path / "src")}})
    model = finetuned_model(cfg, latent_shape=(4, 8, 8), extra_in_channels=0, cond_dims={}, cls_dim=None)
    assert model.config.cls_dim is None and model.cls_head is None
