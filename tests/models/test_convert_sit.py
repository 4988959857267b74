"""SiT / REPA conversion: a tiny SiT-layout network with known weights, run by an independent
implementation of the SiT forward and of each repository's time convention, equals the converted
MuPD with time and velocity mapped.

Conventions (willisma/SiT ``transport/path.py`` ICPlan; sihyun-yu/REPA ``loss.py`` linear path):
SiT: x_t = t x1 + (1 - t) eps (data x1 at t = 1), the network sees t in [0, 1] and predicts
x1 - eps; REPA: x_t = (1 - t) x + t eps, target eps - x (mupd's direction), t unscaled.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mupd import MuPD, MupdError
from mupd.models.convert import convention_config, load_dit_weights

D, HEADS, DEPTH, P, SIZE, C, CLASS = 64, 4, 2, 2, 8, 4, 7


def _pos_embed(dim: int, grid: int) -> np.ndarray:
    """MAE/DiT get_2d_sincos_pos_embed, written out in numpy."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    w, h = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([one_axis(dim // 2, w), one_axis(dim // 2, h)], axis=1)


def sit_state(learn_sigma: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """SiT models.py keys with seeded random values everywhere (SiT zero-inits some of them)."""
    g = torch.Generator().manual_seed(seed)
    out_c = 2 * C if learn_sigma else C

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    state = {"x_embedder.proj.weight": r(D, C, P, P), "x_embedder.proj.bias": r(D),
             "pos_embed": torch.from_numpy(_pos_embed(D, SIZE // P)).float()[None],
             "t_embedder.mlp.0.weight": r(D, 256), "t_embedder.mlp.0.bias": r(D),
             "t_embedder.mlp.2.weight": r(D, D), "t_embedder.mlp.2.bias": r(D),
             "y_embedder.embedding_table.weight": r(11, D),
             "final_layer.linear.weight": r(P * P * out_c, D), "final_layer.linear.bias": r(P * P * out_c),
             "final_layer.adaLN_modulation.1.weight": r(2 * D, D), "final_layer.adaLN_modulation.1.bias": r(2 * D)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state |= {b + "attn.qkv.weight": r(3 * D, D), b + "attn.qkv.bias": r(3 * D),
                  b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
                  b + "mlp.fc1.weight": r(4 * D, D), b + "mlp.fc1.bias": r(4 * D),
                  b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D),
                  b + "adaLN_modulation.1.weight": r(6 * D, D), b + "adaLN_modulation.1.bias": r(6 * D)}
    return state


def sit_forward(s: dict, x: torch.Tensor, t: torch.Tensor, y: int, learn_sigma: bool = True) -> torch.Tensor:
    """SiT.forward(x, t, y) in float64: t is the network's own time, unscaled."""
    s = {k: v.double() for k, v in s.items()}
    x = x.double()
    lin = lambda h, name: F.linear(h, s[name + ".weight"], s[name + ".bias"])  # noqa: E731
    mod = lambda h, shift, scale: h * (1 + scale[:, None]) + shift[:, None]  # noqa: E731
    norm = lambda h: F.layer_norm(h, (D,), eps=1e-6)  # noqa: E731
    h = F.conv2d(x, s["x_embedder.proj.weight"], s["x_embedder.proj.bias"], stride=P).flatten(2).transpose(1, 2) + s["pos_embed"]
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float64) / 128)
    args = t.double()[:, None] * freqs[None]
    c = lin(F.silu(lin(torch.cat([torch.cos(args), torch.sin(args)], -1), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = c + s["y_embedder.embedding_table.weight"][y]
    B, N, _ = h.shape
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sh1, sc1, g1, sh2, sc2, g2 = lin(F.silu(c), b + "adaLN_modulation.1").chunk(6, 1)
        q, k, v = lin(mod(norm(h), sh1, sc1), b + "attn.qkv").reshape(B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), -1) @ v
        h = h + g1[:, None] * lin(att.transpose(1, 2).reshape(B, N, D), b + "attn.proj")
        h = h + g2[:, None] * lin(F.gelu(lin(mod(norm(h), sh2, sc2), b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, 1)
    out = lin(mod(norm(h), shift, scale), "final_layer.linear")
    out_c = 2 * C if learn_sigma else C
    g = SIZE // P
    out = torch.einsum("nhwpqc->nchpwq", out.reshape(B, g, g, P, P, out_c)).reshape(B, out_c, SIZE, SIZE)
    return out[:, :C] if learn_sigma else out


def _converted(convention: str, state: dict) -> MuPD:
    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 8}, in_channels=C, input_size=SIZE,
                             **convention_config(convention))
    load_dit_weights(model, state, "dit", class_label=CLASS, convention=convention)
    return model.double().eval()  # float64 on both sides: the comparison tests the mapping, not rounding


def test_sit_time_and_velocity_are_mapped():
    """mupd's v(x, t) (t = 1 noise, v = eps - x0) == -v_SiT(x, 1 - t)."""
    state = sit_state(learn_sigma=True)
    model = _converted("sit", state)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, C, SIZE, SIZE, generator=g), torch.tensor([0.03, 0.5, 0.96])
    with torch.no_grad():
        ours = model(x.double(), t.double())
    theirs = -sit_forward(state, x, 1.0 - t, CLASS)
    assert theirs.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # and the transport agrees: one Euler step of each from the same x_t lands on the same point
    with torch.no_grad():
        ours_step = x.double() + (0.4 - 0.5) * model(x.double(), torch.full((3,), 0.5))
    theirs_step = x.double() + (0.6 - 0.5) * sit_forward(state, x, torch.full((3,), 0.5), CLASS)
    torch.testing.assert_close(ours_step.double(), theirs_step, rtol=1e-5, atol=1e-5)


def test_repa_time_is_unscaled_and_direction_kept():
    state = sit_state(learn_sigma=False, seed=2)
    model = _converted("repa", state)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, C, SIZE, SIZE, generator=g), torch.tensor([0.2, 0.8])
    with torch.no_grad():
        ours = model(x.double(), t.double())
    torch.testing.assert_close(ours, sit_forward(state, x, t, CLASS, learn_sigma=False), rtol=1e-5, atol=1e-5)


def test_convention_mismatch_and_qk_norm_are_refused():
    state = sit_state()
    dit_model = MuPD.from_preset("tiny", modalities=(), in_channels=C, input_size=SIZE, **convention_config("dit"))
    with pytest.raises(MupdError, match="'sit' checkpoint"):
        load_dit_weights(dit_model, state, "dit", convention="sit")
    with pytest.raises(MupdError, match="convention must be one of"):
        convention_config("edm")
    with pytest.raises(MupdError, match="QK-norm"):
        load_dit_weights(_converted("repa", sit_state(learn_sigma=False)),
                         {**sit_state(learn_sigma=False), "blocks.0.attn.q_norm.weight": torch.ones(16)}, "dit", convention="repa")


def test_finetune_from_sit_weights(tmp_path):
    """``finetune.format: sit`` builds the time-reversed model the SiT weights need."""
    from safetensors.torch import save_file

    from mupd.train import TrainConfig
    from mupd.train.finetune import load_source

    save_file(sit_state(), str(tmp_path / "sit.safetensors"))
    cfg = TrainConfig.from_dict({"model": {"preset": "tiny", "overrides": {"hidden_size": D, "num_heads": HEADS, "depth": DEPTH}},
                                 "finetune": {"init_from": str(tmp_path / "sit.safetensors"), "format": "sit"}})
    model = load_source(cfg, latent_shape=(C, SIZE, SIZE)).double().eval()
    assert model.config.time_reversed and model.config.time_scale == 1.0
    x, t = torch.randn(2, C, SIZE, SIZE), torch.tensor([0.3, 0.7])
    with torch.no_grad():  # no class folded in here: compare against SiT with a zero class row
        ours = model(x.double(), t.double())
    state = {**sit_state(), "y_embedder.embedding_table.weight": torch.zeros(11, D)}
    torch.testing.assert_close(ours, -sit_forward(state, x, 1.0 - t, 0), rtol=1e-5, atol=1e-5)
