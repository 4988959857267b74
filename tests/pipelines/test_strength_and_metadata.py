"""SDEdit strengths every sampler can start from, and metadata that records only what was applied."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from PIL import Image

from mupd.errors import MupdError


@pytest.fixture(scope="module")
def patch(sample_data):
    return Image.open(sorted((sample_data / "pcam/valid/0").iterdir())[1]).convert("RGB").crop((40, 40, 72, 72))


def test_the_sde_threshold_is_the_samplers_own():
    from mupd.flow import sample
    from mupd.pipelines.sdedit import SDE_T_END

    assert inspect.signature(sample).parameters["t_end"].default == SDE_T_END


@pytest.mark.parametrize("strength", [0.01, 0.04])
def test_too_small_a_strength_for_the_sde_says_why(gen, patch, strength):
    message = r"strength .* too small for the euler_maruyama sampler.*use strength > 0.04"
    with pytest.raises(MupdError, match=message):
        gen.vary(patch, strength=strength, sampler="euler_maruyama", steps=20)
    with pytest.raises(MupdError, match=message):
        gen.translate(patch, strength=strength, sampler="euler_maruyama", steps=20)


def test_small_strengths_run_with_every_sampler(gen, patch):
    # euler_maruyama over 0.3 of a 4-step path is 1.2 steps: it runs 2 (one noisy step, one mean step)
    out = gen.vary(patch, strength=0.3, use_reference=False, sampler="euler_maruyama", steps=4, seed=0)
    assert out.parameters[0]["mupd:steps_run"] == 2 and out.parameters[0]["mupd:steps"] == 4
    tr = gen.translate(patch, strength=0.3, sampler="euler_maruyama", steps=4, seed=0)
    assert tr.parameters[0]["mupd:steps_run"] == 2
    # an ODE sampler takes any strength; a tiny one stays next to the autoencoder's reconstruction
    tiny = gen.vary(patch, strength=0.01, use_reference=False, sampler="heun", steps=20, seed=0, output_type="np")
    keep = gen.vary(patch, strength=0.0, use_reference=False, steps=20, seed=0, output_type="np")
    assert tiny.parameters[0]["mupd:steps_run"] == 1
    assert np.abs(tiny.images - keep.images).mean() < 0.02
    from mupd.pipelines.sdedit import partial_steps

    assert [partial_steps(s, 10, "heun") for s in (0.0, 0.01, 0.5, 1.0)] == [0, 1, 5, 10]


def test_readout_refuses_guidance_instead_of_recording_it(stainer, patch):
    with pytest.raises(MupdError, match="readout.*guidance would not be applied"):
        stainer.stain(patch, method="readout", text="Ki67", guidance=3.0)
    plain = stainer.stain(patch, method="readout", text="Ki67", output_type="np")
    params = plain.parameters[0]
    assert params["mupd:guidance"] is None and params["mupd:sampler"] == "readout" and params["mupd:steps"] == 1
    # with sampling, guidance is applied (the pixels move) and recorded
    guided = stainer.stain(patch, method="sample", text="Ki67", guidance=3.0, steps=2, seed=0, output_type="np")
    unguided = stainer.stain(patch, method="sample", text="Ki67", steps=2, seed=0, output_type="np")
    assert guided.parameters[0]["mupd:guidance"] == 3.0 and not np.array_equal(guided.images, unguided.images)
