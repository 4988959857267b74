"""MuPD backbone: shapes, dtypes, presets, and the decoupled cross-modal attention's guarantees."""

from __future__ import annotations

import pytest
import torch

from mupd import MuPD, MupdError
from mupd.models import MuPDConfig, preset_names
from mupd.models.attention import modulate
from mupd.models.testing import perturb_zero_init_


def tiny(**kw):
    kw.setdefault("modalities", ("image", "text", "rna"))
    kw.setdefault("cond_dims", {"image": 24, "text": 32, "rna": 16})
    return MuPD.from_preset("tiny", **kw)


def conds(B=3, L=5):
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False  # padding
    return {"image": torch.randn(B, 24), "text": (torch.randn(B, L, 32), mask), "rna": torch.randn(B, 7, 16)}


def inputs(B=3, C=4, S=8):
    return torch.randn(B, C, S, S), torch.rand(B)


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_shapes_over_patch_sizes(patch):
    model = MuPD.from_preset("tiny", patch_size=patch, input_size=16, modalities=("text",), cond_dims={"text": 32})
    x, t = inputs(2, 4, 16)
    v = model(x, t, {"text": torch.randn(2, 3, 32)})
    assert v.shape == x.shape and v.dtype == torch.float32
    # other latent sizes reuse the fixed sin-cos embedding computed for that grid
    x2 = torch.randn(2, 4, 24, 16)
    assert model(x2, t).shape == x2.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    model = perturb_zero_init_(tiny()).to(dtype)
    x, t = inputs()
    c = {k: (v[0].to(dtype), v[1]) if isinstance(v, tuple) else v.to(dtype) for k, v in conds().items()}
    v = model(x.to(dtype), t, c)
    assert v.dtype == dtype and torch.isfinite(v).all()


def test_timestep_embedding_stays_fp32_under_bf16_autocast():
    """bf16 would round t = 0.5 and 0.501 to the same value; the embedder computes in fp32 anyway."""
    model = perturb_zero_init_(tiny())
    t = torch.tensor([0.5, 0.501, 0.9])
    reference = model.t_embedder(t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model.t_embedder(t)
        v = model(*inputs(), conds())
    assert emb.dtype == torch.float32 and torch.equal(emb, reference)
    assert not torch.equal(emb[0], emb[1])
    assert torch.isfinite(v).all()


def test_out_channels_and_scalar_t():
    model = MuPD.from_preset("tiny", in_channels=3, out_channels=6, modalities=())
    v = model(torch.randn(2, 3, 8, 8), 0.5)
    assert v.shape == (2, 6, 8, 8)


def test_preset_table():
    assert "XL/2" in preset_names() and "S/8" in preset_names() and "tiny" in preset_names()
    cfg = MuPDConfig.from_preset("XL/2")
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (28, 1152, 16, 2)
    assert MuPDConfig.from_preset("B/4").patch_size == 4
    assert (MuPDConfig.from_preset("L/2").depth, MuPDConfig.from_preset("S/2").hidden_size) == (24, 384)
    with pytest.raises(MupdError, match="unknown preset"):
        MuPDConfig.from_preset("XXL/2")
    with pytest.raises(MupdError, match="unknown MuPDConfig keys"):
        MuPDConfig.from_dict({"hidden": 3})
    with pytest.raises(MupdError, match="divisible"):
        MuPDConfig.from_preset("tiny", num_heads=5)
    with pytest.raises(MupdError, match="conv_mlp must be true or false, not 'yes'"):
        MuPDConfig.from_preset("tiny", conv_mlp="yes")


def _dit_block_params(D, mlp=4.0):
    return (D * 3 * D + 3 * D) + (D * D + D) + (D * int(D * mlp) * 2 + int(D * mlp) + D) + (D * 6 * D + 6 * D)


def _stream_params(D):
    return (D * 3 * D + 3 * D) + 4 * (D * D + D)  # adaLN(shift, scale, gate) + q, k, v, o


@pytest.mark.parametrize("name", ["S/2", "B/4", "L/2", "XL/2", "XL/8"])
def test_parameter_counts_on_meta(name):
    """Big presets are built on the meta device (no memory) and checked against the arithmetic."""
    cond_dims = {"image": 1024, "text": 1024, "rna": 1152}
    with torch.device("meta"):
        plain = MuPD.from_preset(name, modalities=())
        dca = MuPD.from_preset(name, modalities=("image", "text", "rna"), cond_dims=cond_dims)
    cfg = plain.config
    D, p = cfg.hidden_size, cfg.patch_size
    embed = (4 * p * p * D + D) + (256 * D + D + D * D + D)
    final = (D * 2 * D + 2 * D) + (D * p * p * 4 + p * p * 4)
    expected_plain = embed + cfg.depth * _dit_block_params(D) + final
    assert plain.num_parameters() == expected_plain
    projections = sum(d * D + D for d in cond_dims.values())
    assert dca.num_parameters() == expected_plain + cfg.depth * 3 * _stream_params(D) + projections
    if name == "XL/2":
        # DiT-XL/2 (256 px) counts 675,129,632 including its 1001-class table, learned-sigma head
        # (8 channels) and the frozen pos_embed Parameter (256 x 1152; a buffer here)
        assert plain.num_parameters() == 675_129_632 - 1001 * 1152 - (1152 * 16 + 16) - 256 * 1152
        assert 1.40e9 < dca.num_parameters() < 1.50e9  # mupd-notes §2.2: released trunk 1.41 B


@torch.no_grad()
def _set_gates(model, std: float) -> MuPD:
    """The cross-attention gates (last third of each stream's adaLN rows: shift, scale, gate) set to
    zero (``std=0``) or random; every other weight is left as it is."""
    D = model.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    for name, module in model.named_modules():
        if name.endswith(("cross.streams.image", "cross.streams.text", "cross.streams.rna", "cross.stream")):
            for param in (module.adaLN_modulation[-1].weight, module.adaLN_modulation[-1].bias):
                param[2 * D:] = torch.randn(param[2 * D:].shape, generator=gen) * std
    return model


def _closed_gate_model(attention: str = "decoupled") -> MuPD:
    """Every weight non-zero (final layer included, so the output is not trivially zero) except the
    cross-attention gates, which are zero as in a fresh model."""
    return _set_gates(perturb_zero_init_(tiny(attention=attention), std=0.2), 0.0).eval()


def _gates_hold(model) -> bool:
    """Closed gates: any conditions leave the output bit-identical (and it is a real output)."""
    x, t = inputs()
    with torch.no_grad():
        base = model(x, t)
        assert base.abs().mean() > 0.05
        return torch.equal(model(x, t, conds()), base) and torch.equal(model(x, t, {"text": conds()["text"]}), base)


@pytest.mark.parametrize("attention", ["decoupled", "shared"])
def test_closed_gates_ignore_conditions_and_open_gates_do_not(attention, monkeypatch):
    model = _closed_gate_model(attention)
    assert _gates_hold(model)
    x, t = inputs()
    with torch.no_grad():
        base = model(x, t)
        _set_gates(model, 0.2)  # open the gates: now conditions matter
        assert not torch.allclose(model(x, t, conds()), base)
    # the check above can fail: a stream that skips its gate is caught
    from mupd.models.attention import CrossStream

    def ungated(self, normed, c, cond):
        shift, scale, _gate = self.adaLN_modulation(c).chunk(3, dim=1)
        return torch.ones_like(_gate).unsqueeze(1), self.attn(modulate(normed, shift, scale), cond)

    monkeypatch.setattr(CrossStream, "gated", ungated)
    assert not _gates_hold(_closed_gate_model(attention))


def test_absent_modality_is_exactly_skipped():
    """A model with streams (text, rna) given only text equals a text-only model with the same weights."""
    both = perturb_zero_init_(tiny(modalities=("text", "rna"), cond_dims={"text": 32, "rna": 16}))
    only = tiny(modalities=("text",), cond_dims={"text": 32})
    missing, unexpected = only.load_state_dict(both.state_dict(), strict=False)
    assert not missing and all(".rna" in k or "cond_embedders.rna" in k for k in unexpected)
    x, t = inputs()
    text = conds()["text"]
    assert torch.equal(both(x, t, {"text": text}), only(x, t, {"text": text}))
    assert torch.equal(both(x, t, {"text": text, "rna": None}), only(x, t, {"text": text}))


def test_all_false_mask_row_equals_absent():
    model = perturb_zero_init_(tiny())
    x, t = inputs()
    c = conds()
    tokens, mask = c["text"]
    mask = mask.clone()
    mask[1] = False
    out = model(x, t, {"text": (tokens, mask)})
    ref = model(x, t, {})
    with_text = model(x, t, {"text": c["text"]})
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], ref[1])
    assert torch.equal(out[2], with_text[2]) and not torch.allclose(out[2], ref[2])
    # per-sample (B,) masks are the same thing
    per_sample = model(x, t, {"text": (tokens, torch.tensor([True, False, True]))})
    assert torch.equal(per_sample[1], ref[1])


def test_scale_zero_equals_absent_and_scales_matter():
    model = perturb_zero_init_(tiny())
    x, t = inputs()
    c = conds()
    without_rna = {k: v for k, v in c.items() if k != "rna"}
    assert torch.equal(model(x, t, c, scales={"rna": 0.0}), model(x, t, without_rna))
    assert not torch.allclose(model(x, t, c, scales={"rna": 2.0}), model(x, t, c))


def test_padding_mask_is_honoured():
    model = perturb_zero_init_(tiny())
    x, t = inputs()
    tokens, mask = conds()["text"]
    junk = tokens.clone()
    junk[0, 3:] = 100.0  # padded positions of sample 0
    a = model(x, t, {"text": (tokens, mask)})
    b = model(x, t, {"text": (junk, mask)})
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(model(x, t, {"text": junk}), a, atol=1e-3)


def test_single_vector_equals_one_token():
    model = perturb_zero_init_(tiny())
    x, t = inputs()
    img = torch.randn(3, 24)
    assert torch.equal(model(x, t, {"image": img}), model(x, t, {"image": img[:, None]}))
    # a batch-1 condition broadcasts over the batch
    one = model(x, t, {"image": img[:1]})
    assert torch.allclose(one, model(x, t, {"image": img[:1].expand(3, 24)}), atol=1e-6)


def test_vector_modality_tokens():
    model = perturb_zero_init_(MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 32}, vector_modalities={"rna": 331}))
    assert model.config.modalities == ("text", "rna")
    x, t = inputs()
    vec = torch.randn(3, 331)
    tokens = model.cond_embedders["rna"](vec)
    assert tokens.shape == (3, 331, 64)
    assert torch.allclose(tokens[1, 5], vec[1, 5] * model.cond_embedders["rna"].weight[5] + model.cond_embedders["rna"].bias[5])
    a = model(x, t, {"rna": vec})
    assert torch.equal(a, model(x, t, {"rna": (vec, torch.ones(3, 331, dtype=torch.bool))}))
    dropped = model(x, t, {"rna": (vec, torch.tensor([True, False, True]))})
    assert torch.equal(dropped[1], model(x, t)[1]) and torch.equal(dropped[0], a[0])
    # the stream keeps the vector factored (K/V per entry, not per sample and entry): same numbers
    from mupd.models.attention import ConditionTokens

    emb = model.cond_embedders["rna"]
    factored = ConditionTokens.build(None, None, vector=(vec, emb.weight, emb.bias))
    explicit = ConditionTokens.build(factored.materialise(), None)
    assert torch.allclose(explicit.tokens, tokens)
    attn = model.blocks[0].cross.streams["rna"].attn
    query = torch.randn(3, 16, 64)
    assert torch.allclose(attn(query, factored), attn(query, explicit), atol=1e-5)
    with pytest.raises(MupdError, match=r"\(B, 331\)"):
        model.check_inputs(x, t, {"rna": torch.randn(3, 330)})


def test_shared_attention_ablation():
    model = perturb_zero_init_(tiny(attention="shared"))
    assert "modality_embed" in str(dict(model.named_parameters()).keys())
    x, t = inputs()
    c = conds()
    out = model(x, t, c)
    ref = model(x, t, {})
    assert not torch.allclose(out, ref)
    # dropping every modality for sample 1 equals no conditions for it
    dropped = {k: (v[0] if isinstance(v, tuple) else v, torch.tensor([True, False, True])) for k, v in c.items()}
    assert torch.allclose(model(x, t, dropped)[1], ref[1], atol=1e-6)
    with pytest.raises(MupdError, match="decoupled"):
        model.check_inputs(x, t, c, scales={"text": 2.0})
    dca = tiny()
    assert model.num_parameters() < dca.num_parameters()


def test_bad_inputs_name_the_field():
    """check_inputs (called once at the edge; forward does not validate) names the field."""
    model = tiny()
    x, t = inputs()
    bad = [
        ("no 'dna' stream", (x, t, {"dna": torch.randn(3, 4)})),
        (r"conditions\['text'\].*cond_dims", (x, t, {"text": torch.randn(3, 5, 31)})),
        ("NaN", (x, t, {"text": torch.full((3, 5, 32), float("nan"))})),
        ("batch size 2", (x, t, {"text": torch.randn(2, 5, 32)})),
        ("mask shape", (x, t, {"text": (torch.randn(3, 5, 32), torch.ones(3, 4, dtype=torch.bool))})),
        ("must be a dict", (x, t, [torch.randn(3, 5, 32)])),
        ("channels", (torch.randn(3, 5, 8, 8), t)),
        ("not divisible by the patch size", (torch.randn(3, 4, 7, 7), t)),
        ("shape", (x, torch.rand(2))),
    ]
    for message, args in bad:
        with pytest.raises(MupdError, match=message):
            model.check_inputs(*args)
    with pytest.raises(MupdError, match="scales"):
        model.check_inputs(x, t, scales={"dna": 1.0})
    model.check_inputs(x, t, conds(), scales={"text": 2.0})  # good inputs pass
    model.check_inputs(x, 0.5, {"text": (torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.bool))})  # batch 1 broadcasts


def test_cls_token_and_repa_hidden():
    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 32}, cls_dim=12, repa_block=1)
    x, t = inputs()
    cls = torch.randn(3, 12)
    v, extras = model(x, t, {"text": torch.randn(3, 2, 32)}, cls=cls, return_extras=True)
    assert extras["hidden"].shape == (3, 16, 64)  # 8x8 latent / patch 2 = 16 image tokens (CLS excluded)
    assert extras["cls_v"].shape == (3, 12) and not extras["cls_v"].any()  # zero-initialised head
    # the CLS token sits in the sequence: once the model is trained it changes the image velocity
    perturb_zero_init_(model)
    assert not torch.allclose(model(x, t, cls=cls), model(x, t, cls=torch.zeros(3, 12)))
    with pytest.raises(MupdError, match="no CLS token"):
        tiny().check_inputs(x, t, cls=cls)
    with pytest.raises(MupdError, match=r"cls must have shape \(3, 12\)"):
        model.check_inputs(x, t, cls=cls[:, :5])


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = perturb_zero_init_(tiny())
    b = tiny(grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    a.train(), b.train()
    x, t = inputs()
    c = conds()
    a(x, t, c).square().mean().backward()
    b(x, t, c).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name


def test_extra_input_channels_start_at_zero():
    model = MuPD.from_preset("tiny", extra_in_channels=4, modalities=())
    perturb_zero_init_(model)  # leaves the (partly non-zero) patch-embedding weight alone
    x = torch.randn(2, 4, 8, 8)
    t = torch.rand(2)
    a = model(torch.cat([x, torch.zeros(2, 4, 8, 8)], 1), t)
    b = model(torch.cat([x, torch.randn(2, 4, 8, 8)], 1), t)
    assert torch.equal(a, b) and a.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("attention", ["decoupled", "shared"])
def test_prepared_conditions_cache_keys_and_values(attention):
    model = perturb_zero_init_(tiny(attention=attention)).eval()
    x, t = inputs()
    c = conds()
    c["text"][1][2] = False  # one sample without text
    with torch.no_grad():
        direct = model(x, t, c)
        prepared = model.prepare_conditions(c, batch_size=3)
        first = model(x, t, prepared)
        cached = sum(len(cond.cache) for cond in prepared.values())
        assert cached == model.config.depth * (3 if attention == "decoupled" else 1)
        second = model(x + 1, t * 0.5, prepared)  # reuses the cached keys/values
        assert torch.allclose(first, direct, atol=1e-6)
        assert torch.allclose(second, model(x + 1, t * 0.5, c), atol=1e-6)
        with pytest.raises(MupdError, match="batch size 3"):
            model(x[:2], t[:2], prepared)
    with pytest.raises(MupdError, match="no_grad"):
        model(x, t, prepared)


def test_conv_mlp_is_the_plain_mlp_with_an_identity_kernel():
    torch.manual_seed(0)
    mixed = perturb_zero_init_(tiny(conv_mlp=True, cls_dim=12))  # with a CLS token past the grid
    plain = tiny(cls_dim=12)
    missing, unexpected = plain.load_state_dict(mixed.state_dict(), strict=False)
    assert not missing and unexpected and all(".mlp.conv." in k for k in unexpected)
    with torch.no_grad():
        for block in mixed.blocks:
            block.mlp.conv.weight.zero_()
            block.mlp.conv.weight[:, 0, 1, 1] = 1.0
            block.mlp.conv.bias.zero_()
    x, t = inputs()
    c, cls = conds(), torch.randn(3, 12)
    assert torch.allclose(mixed(x, t, c, cls=cls), plain(x, t, c, cls=cls), atol=1e-6)


@pytest.mark.parametrize("conv_mlp", [False, True])
def test_conv_mlp_mixes_exactly_the_neighbouring_patches(conv_mlp):
    # one block with its attention gate closed: only the MLP can move information between patches
    model = perturb_zero_init_(MuPD.from_preset("tiny", depth=1, modalities=(), conv_mlp=conv_mlp))
    D = model.config.hidden_size
    with torch.no_grad():
        model.blocks[0].adaLN_modulation[-1].weight[2 * D:3 * D].zero_()  # gate_msa
        model.blocks[0].adaLN_modulation[-1].bias[2 * D:3 * D].zero_()
    x = torch.randn(1, 4, 8, 12)  # a 4 x 6 grid of 2 x 2 patches: rows and columns cannot be swapped unnoticed
    bumped = x.clone()
    bumped[..., 2:4, 8:10] += 1.0  # patch (row 1, column 4)
    changed = (model(bumped, 0.5) - model(x, 0.5)).abs().amax(dim=(0, 1)).reshape(4, 2, 6, 2).amax(dim=(1, 3)) > 1e-6
    expected = torch.zeros(4, 6, dtype=torch.bool)
    if conv_mlp:
        expected[0:3, 3:6] = True  # the 3 x 3 neighbourhood
    else:
        expected[1, 4] = True
    assert torch.equal(changed, expected), changed


def test_conv_mlp_round_trips_through_save_pretrained(tmp_path):
    model = perturb_zero_init_(tiny(conv_mlp=True))
    model.save_pretrained(tmp_path / "m")
    loaded = MuPD.from_pretrained(tmp_path / "m", use_ema=False)
    assert loaded.config.conv_mlp
    x, t = inputs()
    c = conds()
    assert torch.equal(loaded(x, t, c), model(x, t, c))
