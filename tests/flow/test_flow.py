"""Flow matching: interpolant, loss, condition dropout, guidance (batched == separate), samplers
checked against the exact velocity field of a Gaussian target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mupd import MuPD, MupdError
from mupd.flow import (
    GuidancePlan,
    drop_conditions,
    flow_matching_loss,
    guided_velocity,
    interpolate,
    readout,
    sample,
    sample_time,
    time_grid,
)
from mupd.models.inputs import ConditionRows
from mupd.models.testing import perturb_zero_init_


class GaussianVelocity(nn.Module):
    """The exact marginal velocity E[eps - x0 | x_t] when x0 ~ N(mu, s^2) per element.

    Its probability-flow ODE maps noise z to mu + s z exactly, so samplers can be checked
    against a known answer independently of any network."""

    def __init__(self, mu: float, s: float):
        super().__init__()
        self.mu, self.s = mu, s
        self.calls = 0

    def forward(self, x, t, conditions=None, **kw):
        self.calls += 1
        t = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        var = (1 - t) ** 2 * self.s**2 + t**2
        centred = x - (1 - t) * self.mu
        e_x0 = self.mu + (1 - t) * self.s**2 / var * centred
        e_eps = t / var * centred
        return e_eps - e_x0


def test_interpolate_endpoints_and_target():
    x0, eps = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    x_t, v = interpolate(x0, eps, torch.tensor([0.0, 1.0, 0.5, 0.25]))
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], eps[1])
    assert torch.allclose(x_t[2], 0.5 * x0[2] + 0.5 * eps[2])
    assert torch.equal(v, eps - x0)
    with pytest.raises(MupdError):
        interpolate(x0, eps[:, :1], torch.rand(4))


def test_time_sampling():
    g = torch.Generator().manual_seed(0)
    u = sample_time(20000, "uniform", generator=g)
    ln = sample_time(20000, "logit_normal", generator=g)
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean() - 0.5) < 0.01
    assert 0 < ln.min() and ln.max() < 1 and abs(ln.mean() - 0.5) < 0.01 and ln.std() < u.std()
    assert torch.equal(sample_time(5, generator=torch.Generator().manual_seed(3)), sample_time(5, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(MupdError, match="time_sampling"):
        sample_time(3, "cosine")


def test_drop_conditions_rates_and_masks():
    B = 4000
    conditions = {"text": (torch.randn(B, 3, 2), torch.ones(B, 3, dtype=torch.bool)), "rna": torch.randn(B, 5)}
    out = drop_conditions(conditions, p_each=0.1, p_all=0.1, generator=torch.Generator().manual_seed(0))
    text_kept = out["text"][1].all(dim=1)
    rna_kept = out["rna"][1]
    assert out["text"][1].shape == (B, 3) and rna_kept.shape == (B,)
    assert abs(text_kept.float().mean() - 0.81) < 0.03 and abs(rna_kept.float().mean() - 0.81) < 0.03
    both_dropped = (~text_kept & ~rna_kept).float().mean()
    assert abs(both_dropped - (0.1 + 0.9 * 0.01)) < 0.02  # joint drop + independent coincidence
    assert out["text"][0] is conditions["text"][0]  # tokens untouched; only masks change
    again = drop_conditions(conditions, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["rna"][1], rna_kept)


def test_loss_matches_manual_and_works_with_any_network():
    net = GaussianVelocity(0.3, 0.5)
    x0 = torch.randn(6, 2, 4, 4)
    noise, t = torch.randn_like(x0), torch.rand(6)
    loss = flow_matching_loss(net, x0, None, noise=noise, t=t)
    x_t, target = interpolate(x0, noise, t)
    assert torch.allclose(loss, (net(x_t, t) - target).pow(2).mean())
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(flow_matching_loss(net, x0, None, generator=g1), flow_matching_loss(net, x0, None, generator=g2))


def test_loss_extras_and_cls_term():
    model = perturb_zero_init_(MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 8}, cls_dim=5, repa_block=1))
    x0, cls = torch.randn(3, 4, 8, 8), torch.randn(3, 5)
    conditions = drop_conditions({"text": torch.randn(3, 2, 8)})
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    loss, extras = flow_matching_loss(model, x0, conditions, generator=g(), cls=cls, cls_weight=0.5, return_extras=True)
    assert extras["hidden"].shape == (3, 16, 64) and extras["cls_v"].shape == (3, 5)
    assert torch.allclose(loss, extras["loss_v"] + 0.5 * extras["loss_cls"])
    loss.backward()
    assert model.cls_head.out.weight.grad is not None and model.cls_head.out.weight.grad.abs().sum() > 0
    no_cls = flow_matching_loss(model, x0, conditions, generator=g(), time_sampling="logit_normal")
    assert no_cls.ndim == 0 and torch.isfinite(no_cls)


def guided_model():
    return perturb_zero_init_(
        MuPD.from_preset("tiny", modalities=("image", "text", "rna"), cond_dims={"image": 8, "text": 8}, vector_modalities={"rna": 6}), std=0.2
    ).eval()


def guided_inputs(B=3):
    mask = torch.ones(B, 4, dtype=torch.bool)
    mask[0, 2:] = False
    return torch.randn(B, 4, 8, 8), torch.full((B,), 0.6), {
        "image": torch.randn(B, 8),
        "text": (torch.randn(B, 4, 8), mask),
        "rna": torch.randn(B, 6),
    }


def only(conditions, keep):
    return {k: v for k, v in conditions.items() if k in keep}


@torch.no_grad()
def test_guidance_scale_one_is_conditional():
    model = guided_model()
    x, t, c = guided_inputs()
    cond = model(x, t, c)
    assert torch.equal(guided_velocity(model, x, t, c, 1.0), cond)
    single = only(c, {"text"})
    assert torch.allclose(guided_velocity(model, x, t, single, {"text": 1.0}), model(x, t, single), atol=1e-5)


@torch.no_grad()
def test_batched_guidance_equals_separate_forwards():
    model = guided_model()
    x, t, c = guided_inputs()
    v_none, v_all = model(x, t, {}), model(x, t, c)
    joint = guided_velocity(model, x, t, c, 3.0)
    assert torch.allclose(joint, v_none + 3.0 * (v_all - v_none), atol=1e-5)
    assert not torch.allclose(joint, v_all, atol=1e-3)

    scales = {"text": 2.0, "rna": 4.0}  # image unguided: on in every branch
    per = guided_velocity(model, x, t, c, scales)
    base = model(x, t, only(c, {"image"}))
    expected = base + 2.0 * (model(x, t, only(c, {"image", "text"})) - base) + 4.0 * (model(x, t, only(c, {"image", "rna"})) - base)
    assert torch.allclose(per, expected, atol=1e-5)

    counting = GaussianCounter(model)
    guided_velocity(counting, x, t, c, scales)
    assert counting.calls == 1 and counting.batch == 3 * x.shape[0]  # ONE batched forward
    with pytest.raises(MupdError, match="guidance given for"):
        guided_velocity(model, x, t, only(c, {"text"}), {"rna": 2.0})


@pytest.mark.parametrize("attention", ["decoupled", "shared"])
@torch.no_grad()
def test_guidance_streams_compute_only_on_their_rows(attention):
    """Batched guidance gives each stream only the rows of the branches it is on in (image: every
    branch; text, rna: their own branch), and equals the stacked form with all-False mask rows."""
    model = perturb_zero_init_(
        MuPD.from_preset("tiny", modalities=("image", "text", "rna"), cond_dims={"image": 8, "text": 8},
                         vector_modalities={"rna": 6}, attention=attention), std=0.2
    ).eval().double()  # float64: the two forms agree to rounding, which fp32 guidance would amplify
    x, t, c = guided_inputs()
    x, c = x.double(), {k: (v[0].double(), v[1]) if isinstance(v, tuple) else v.double() for k, v in c.items()}
    B = x.shape[0]
    seen = {}
    if attention == "decoupled":
        def record(name):
            def hook(module, args, out):
                seen.setdefault(name, args[0].shape[0])  # rows the stream's attention ran on
            return hook

        for name, stream in model.blocks[0].cross.streams.items():
            stream.attn.register_forward_hook(record(name))
    for guidance in ({"text": 2.0, "rna": 4.0}, 3.0):
        rows = GuidancePlan(model, c, guidance, B)
        stacked = GuidancePlan(GaussianCounter(model), c, guidance, B)  # a wrapper: no ConditionRows
        assert any(isinstance(v, ConditionRows) for v in rows.conditions.values())
        assert not any(isinstance(v, ConditionRows) for v in stacked.conditions.values())
        seen.clear()
        torch.testing.assert_close(rows.velocity(model, x, t), stacked.velocity(model, x, t), atol=1e-6, rtol=1e-6)
        prepared = GuidancePlan(model, c, guidance, B, prepare=True)  # K/V cached per stream block
        torch.testing.assert_close(prepared.velocity(model, x, t), stacked.velocity(model, x, t), atol=1e-6, rtol=1e-6)
        if attention == "decoupled" and isinstance(guidance, dict):
            assert seen == {"image": 3 * B, "text": B, "rna": B}  # not 3B rows each, half of them zeroed
        elif attention == "decoupled":
            assert seen == {"image": B, "text": B, "rna": B}  # joint: only the conditional branch


class GaussianCounter(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.batch = inner, 0, 0

    def forward(self, x, t, conditions=None, **kw):
        self.calls += 1
        self.batch = x.shape[0]
        return self.inner(x, t, conditions, **kw)


def test_time_grid():
    lin = time_grid(10)
    assert lin[0] == 1 and lin[-1] == 0 and len(lin) == 11 and (lin.diff() < 0).all()
    shifted = time_grid(10, "time_shift", shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > lin[1:-1]).all()
    with pytest.raises(MupdError):
        time_grid(10, "cosine")
    part = time_grid(4, "time_shift", shift=3.0, t_start=0.5)
    assert part[0] == 0.5 and part[-1] == 0 and (part.diff() < 0).all()
    assert torch.allclose(time_grid(4, t_start=0.5), torch.tensor([0.5, 0.375, 0.25, 0.125, 0.0], dtype=torch.float64))


def test_sampling_from_part_way():
    """SDEdit: from x_t at t_start the exact flow still lands on mu + s z (z = the implied noise)."""
    mu, s, t0 = 0.2, 0.5, 0.6
    net = GaussianVelocity(mu, s)
    z = torch.randn(32, 1, 4, 4)
    # for this Gaussian the probability-flow map is affine: x_t = (1 - t) mu + sqrt((1 - t)^2 s^2 + t^2) z
    x_t = (1 - t0) * mu + ((1 - t0) ** 2 * s**2 + t0**2) ** 0.5 * z
    out = sample(net, x_t, None, method="heun", steps=30, t_start=t0)
    assert (out - (mu + s * z)).abs().max() < 1e-3


@pytest.mark.parametrize("method,order,err40", [("heun", 2, 1e-3), ("euler", 1, 0.08)])
def test_ode_samplers_follow_the_exact_flow(method, order, err40):
    """Against the exact map z -> mu + s z: small error and the right convergence order."""
    mu, s = 0.7, 0.4
    net = GaussianVelocity(mu, s)
    z = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    def error(steps, **kw):
        return (sample(net, z, None, method=method, steps=steps, **kw) - (mu + s * z)).abs().max().item()

    e20, e40 = error(20), error(40)
    assert e40 < err40
    assert e20 / e40 > 0.85 * 2**order  # halving the step divides the error by ~2^order
    assert error(40, schedule="time_shift", shift=2.0) < 2 * err40


def test_sde_sampler_matches_target_distribution_and_is_seeded():
    mu, s = -0.5, 0.6
    net = GaussianVelocity(mu, s)
    z = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    a = sample(net, z, None, method="euler_maruyama", steps=100, generator=torch.Generator().manual_seed(1))
    b = sample(net, z, None, method="euler_maruyama", steps=100, generator=torch.Generator().manual_seed(1))
    c = sample(net, z, None, method="euler_maruyama", steps=100, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.mean() - mu) < 0.03 and abs(a.std() - s) < 0.03
    assert net.calls == 300


def test_sampler_guidance_interval_and_extra_input():
    model = perturb_zero_init_(MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 8}, extra_in_channels=2), std=0.2).eval()
    with torch.no_grad():
        model.x_embedder.proj.weight[:, 4:].normal_(0, 0.2)
    z, src = torch.randn(2, 4, 8, 8), torch.randn(2, 2, 8, 8)
    c = {"text": torch.randn(2, 3, 8)}
    plain = sample(model, z, c, method="euler", steps=3, extra_input=src)
    off = sample(model, z, c, method="euler", steps=3, extra_input=src, guidance=4.0, guidance_interval=(0.0, 0.0))
    on = sample(model, z, c, method="euler", steps=3, extra_input=src, guidance=4.0)
    assert torch.equal(plain, off) and not torch.allclose(plain, on, atol=1e-4)
    assert not torch.allclose(plain, sample(model, z, c, method="euler", steps=3, extra_input=-src), atol=1e-4)


def test_sampler_integrates_cls_token():
    model = perturb_zero_init_(MuPD.from_preset("tiny", modalities=(), cls_dim=5), std=0.2).eval()
    z = torch.randn(2, 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    x, cls = sample(model, z, None, method="heun", steps=3, generator=g, return_cls=True)
    assert x.shape == z.shape and cls.shape == (2, 5) and torch.isfinite(cls).all()


def test_readout_is_minus_velocity_at_t1():
    net = GaussianVelocity(0.25, 0.5)
    out = readout(net, None, None, (2, 3, 4, 4))
    assert torch.allclose(out, torch.full((2, 3, 4, 4), 0.25))  # E[x0] when x_1 = 0
    model = perturb_zero_init_(MuPD.from_preset("tiny", modalities=(), extra_in_channels=4)).eval()
    src = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = -model(torch.cat([torch.zeros(2, 4, 8, 8), src], 1), torch.ones(2))
    assert torch.equal(readout(model, None, src, (2, 4, 8, 8)), expected)


def test_guidance_is_combined_in_fp32_under_bf16_autocast():
    """The branches come out of a bf16 forward; ``v(base) + s (v(c) - v(base))`` is formed in fp32
    (in bf16 the amplified difference and the sum are rounded to 8 bits)."""
    model = perturb_zero_init_(MuPD.from_preset("tiny", modalities=("text", "rna"), cond_dims={"text": 16, "rna": 8}), std=0.2).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 4, 8, 8, generator=g) * 4, torch.rand(3, generator=g)
    conditions = {"text": torch.randn(3, 5, 16, generator=g), "rna": torch.randn(3, 2, 8, generator=g)}
    captured = []
    model.register_forward_hook(lambda module, args, out: captured.append(out))
    for guidance, weights in ((4.0, [4.0]), ({"text": 3.0, "rna": 5.0}, [3.0, 5.0])):
        captured.clear()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            v = guided_velocity(model, x, t, conditions, guidance)
        raw = captured[0]
        assert raw.dtype == torch.bfloat16 and v.dtype == torch.float32
        parts = raw.double().chunk(len(weights) + 1)
        expected = parts[0] + sum(w * (p - parts[0]) for w, p in zip(weights, parts[1:]))
        torch.testing.assert_close(v.double(), expected, rtol=1e-6, atol=1e-6)


def test_cls_model_sample_repeats_alone():
    """Image i of a batch, sampled alone from the same latent noise, is the same image: the CLS
    noise of a REG/CLS model belongs to the sample, not to the batch's generator."""
    model = perturb_zero_init_(MuPD.from_preset("tiny", modalities=(), cls_dim=5), std=0.2).eval()
    z = torch.randn(3, 4, 8, 8)
    batch, cls = sample(model, z, None, method="heun", steps=3, generator=torch.Generator().manual_seed(0), return_cls=True)
    alone, cls1 = sample(model, z[1:2], None, method="heun", steps=3, generator=torch.Generator().manual_seed(1), return_cls=True)
    torch.testing.assert_close(alone, batch[1:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls1, cls[1:2], rtol=1e-5, atol=1e-5)
    other = sample(model, z[1:2], None, method="heun", steps=3, cls_noise=torch.randn(1, 5))
    assert not torch.allclose(other, alone, atol=1e-4)  # and the CLS token does matter


def test_sample_and_readout_check_inputs_at_the_edge():
    """The forward validates nothing; sample() and readout() check once, before any step."""
    model = guided_model()
    x, _, c = guided_inputs()
    bad = {**c, "rna": torch.full((3, 6), float("nan"))}
    with pytest.raises(MupdError, match=r"conditions\['rna'\] contains NaN"):
        sample(model, x, bad, method="euler", steps=2)
    with pytest.raises(MupdError, match=r"conditions\['rna'\] contains NaN"):
        readout(model, bad, None, x.shape)
    with pytest.raises(MupdError, match="channels"):
        sample(model, x, c, steps=1, extra_input=torch.zeros(3, 4, 8, 8))  # no extra input channels


def test_sampler_takes_per_modality_scales():
    """``sample(..., scales={"rna": s})``: lambda_m of the decoupled attention; 0 = stream off."""
    model = perturb_zero_init_(MuPD.from_preset("tiny", modalities=("text", "rna"), cond_dims={"text": 8, "rna": 8}), std=0.2).eval()
    z = torch.randn(2, 4, 8, 8)
    c = {"text": torch.randn(2, 3, 8), "rna": torch.randn(2, 4, 8)}
    base = sample(model, z, c, method="euler", steps=2, guidance={"rna": 2.0})
    assert torch.equal(sample(model, z, c, method="euler", steps=2, scales={"rna": 0.0}),
                       sample(model, z, {"text": c["text"]}, method="euler", steps=2))
    assert not torch.allclose(sample(model, z, c, method="euler", steps=2, guidance={"rna": 2.0}, scales={"rna": 1.5}), base)
    with pytest.raises(MupdError, match="scales\\['image'\\]"):
        sample(model, z, c, steps=2, scales={"image": 1.5})
