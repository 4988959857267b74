"""DiT-weight conformance: a tiny diffusers DiTTransformer2DModel, converted, gives the same output."""

from __future__ import annotations

import pytest
import torch

from mupd import MuPD, MupdError
from mupd.models.config import MuPDConfig
from mupd.models.convert import config_from_diffusers, load_dit_weights

diffusers = pytest.importorskip("diffusers")

CLASS = 3


def tiny_dit(tie_embedders: bool = True, layers: int = 2):
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8,  # learned sigma: 2 x 4
        num_layers=layers, sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6,
    )
    with torch.no_grad():  # random values everywhere, including layers DiT zero-initialises
        for p in dit.parameters():
            p.normal_(0, 0.2)
        if tie_embedders:  # real converted DiT checkpoints hold identical per-block copies
            for block in dit.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(dit.transformer_blocks[0].norm1.emb.state_dict())
    return dit.eval()


def reference(dit, x, t):
    """diffusers' mean prediction for class CLASS at DiT timestep 1000 t."""
    labels = torch.full((x.shape[0],), CLASS)
    with torch.no_grad():
        return dit(x, timestep=1000 * t, class_labels=labels).sample[:, :4]


def test_diffusers_dit_conversion_is_exact():
    dit = tiny_dit()
    cfg = config_from_diffusers(dict(dit.config), out_channels=4, modalities=("text",), cond_dims={"text": 8})
    model = MuPD(cfg).eval()
    report = load_dit_weights(model, dit.state_dict(), "diffusers", class_label=CLASS)
    assert "t_embedder.mlp.0.weight" in report["loaded"] and "blocks.1.attn.qkv.weight" in report["loaded"]
    assert any(k.startswith("blocks.0.cross.streams.text") for k in report["kept"])
    assert any("learned-sigma" in k for k in report["dropped"])
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.05, 0.5, 0.97])
    with torch.no_grad():
        ours = model(x, t)
    theirs = reference(dit, x, t)
    assert theirs.abs().mean() > 0.1  # a meaningful, non-trivial output
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
    with torch.no_grad():  # zero-gated streams: a condition does not change the converted model
        assert torch.equal(model(x, t, {"text": torch.randn(3, 2, 8)}), ours)


def test_dit_layout_conversion_is_exact():
    """The facebookresearch DiT / SiT key layout, written here from the diffusers weights."""
    dit = tiny_dit()
    s = dit.state_dict()
    e = "transformer_blocks.0.norm1.emb."
    state = {
        "x_embedder.proj.weight": s["pos_embed.proj.weight"], "x_embedder.proj.bias": s["pos_embed.proj.bias"],
        "pos_embed": torch.zeros(1, 16, 32),
        "t_embedder.mlp.0.weight": s[e + "timestep_embedder.linear_1.weight"], "t_embedder.mlp.0.bias": s[e + "timestep_embedder.linear_1.bias"],
        "t_embedder.mlp.2.weight": s[e + "timestep_embedder.linear_2.weight"], "t_embedder.mlp.2.bias": s[e + "timestep_embedder.linear_2.bias"],
        "y_embedder.embedding_table.weight": s[e + "class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.1.weight": s["proj_out_1.weight"], "final_layer.adaLN_modulation.1.bias": s["proj_out_1.bias"],
        "final_layer.linear.weight": s["proj_out_2.weight"], "final_layer.linear.bias": s["proj_out_2.bias"],
    }
    for i in range(2):
        b = f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([s[b + f"attn1.to_{n}.{kind}"] for n in "qkv"])
            state[f"blocks.{i}.attn.proj.{kind}"] = s[b + f"attn1.to_out.0.{kind}"]
            state[f"blocks.{i}.mlp.fc1.{kind}"] = s[b + f"ff.net.0.proj.{kind}"]
            state[f"blocks.{i}.mlp.fc2.{kind}"] = s[b + f"ff.net.2.{kind}"]
            state[f"blocks.{i}.adaLN_modulation.1.{kind}"] = s[b + f"norm1.linear.{kind}"]
    # a DiT-layout model uses DiT's sinusoid (freq shift 0): refused unless told otherwise
    with pytest.raises(MupdError, match="timestep_freq_shift"):
        load_dit_weights(MuPD(config_from_diffusers(dict(dit.config))), state, "dit")
    # here the weights came from diffusers, so keep diffusers' sinusoid to compare exactly
    model = MuPD(config_from_diffusers(dict(dit.config), extra_in_channels=2)).eval()
    report = load_dit_weights(model, state, "dit", class_label=CLASS, strict_time_embedding=False)
    assert "pos_embed" in report["dropped"] and "y_embedder.embedding_table.weight" in report["dropped"]
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        ours = model(torch.cat([x, torch.randn(2, 2, 8, 8)], 1), t)  # extra channels start at zero
    torch.testing.assert_close(ours, reference(dit, x, t), atol=2e-5, rtol=1e-5)


def test_dit_sinusoid_convention():
    """freq shift 0 is DiT's ``timestep_embedding``; 1 is diffusers' ``Timesteps(..., 1)``."""
    from diffusers.models.embeddings import Timesteps

    from mupd.models.embeddings import timestep_embedding

    t = torch.tensor([0.0, 3.0, 500.0, 999.0])
    torch.testing.assert_close(timestep_embedding(t, 256, freq_shift=1), Timesteps(256, True, 1)(t))
    torch.testing.assert_close(timestep_embedding(t, 256, freq_shift=0), Timesteps(256, True, 0)(t))


def test_read_checkpoint_files(tmp_path):
    from safetensors.torch import save_file

    from mupd.models.convert import read_dit_checkpoint

    dit = tiny_dit()
    state = {k: v.contiguous() for k, v in dit.state_dict().items()}
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    torch.save({"ema": state, "opt": {}}, tmp_path / "ckpt.pt")
    for source in (tmp_path, tmp_path / "ckpt.pt"):
        loaded = read_dit_checkpoint(source)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(MupdError, match="bad.pt"):
        read_dit_checkpoint(tmp_path / "bad.pt")


def test_conversion_errors():
    dit = tiny_dit(tie_embedders=False)
    model = MuPD(config_from_diffusers(dict(dit.config)))
    with pytest.raises(MupdError, match="differs from block 0"):
        load_dit_weights(model, dit.state_dict(), "diffusers")
    dit = tiny_dit()
    deeper = MuPD(config_from_diffusers(dict(dit.config), depth=3))
    with pytest.raises(MupdError, match="lacks backbone tensors"):
        load_dit_weights(deeper, dit.state_dict(), "diffusers")
    wider = MuPD(config_from_diffusers(dict(dit.config), hidden_size=64))
    with pytest.raises(MupdError, match="x_embedder.proj.weight"):
        load_dit_weights(wider, dit.state_dict(), "diffusers")
    with pytest.raises(MupdError, match="layout"):
        load_dit_weights(model, dit.state_dict(), "sit")
    with pytest.raises(MupdError, match="class_label 11"):
        load_dit_weights(MuPD(config_from_diffusers(dict(dit.config))), dit.state_dict(), "diffusers", class_label=11)
    assert isinstance(config_from_diffusers(dict(dit.config)), MuPDConfig)
