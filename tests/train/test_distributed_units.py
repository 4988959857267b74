"""The pieces of the distributed step that run on one process: gradient clipping against
``torch.nn.utils.clip_grad_norm_``, the process-group backend and TF32 switch for CUDA, when DDP
needs ``find_unused_parameters``, and a non-finite loss still stopping a run whose losses are read
from the device only at log intervals."""

from __future__ import annotations

import pytest
import torch

from mupd.errors import MupdError
from mupd.settings import enable_tf32
from mupd.train import TrainConfig
from mupd.train import distributed as D
from mupd.train.data import TrainData
from mupd.train.loop import Trainer


def _grads(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [(7, 5), (5,), (3, 2, 2), (0,)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 3
    return params


@pytest.mark.parametrize("max_norm", [0.5, 1e3, float("inf")])
def test_clip_grad_norm_matches_torch(max_norm):
    ours, theirs = _grads(0), _grads(0)
    norm = D.clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert torch.is_tensor(norm) and norm.device == ours[0].grad.device  # no host sync: a tensor comes back
    torch.testing.assert_close(norm, expected, rtol=1e-6, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


def test_cuda_process_group_and_tf32_settings():
    assert D.process_group_backend(torch.device("cuda", 0)) == "cuda:nccl,cpu:gloo"  # CPU objects keep a backend
    assert D.process_group_backend(torch.device("cpu")) == "gloo"
    policy = D.mixed_precision_policy(bf16=True)
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32 and policy.cast_forward_inputs is False
    before = torch.get_float32_matmul_precision()
    try:
        enable_tf32(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == before == "highest"  # CPU results stay exact
        enable_tf32(torch.device("cuda"))
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before)


def _tiny_data(n: int = 16) -> TrainData:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(n, 4, 8, 8, generator=g)
    return TrainData(latents, torch.zeros(n, dtype=torch.long), ["tissue"] * n)


def _config(tmp_path, **extra) -> TrainConfig:
    data = {"preset": "tiny", "output": str(tmp_path / "run"), "progress": False, "total_images": 64,
            "batch": {"global_size": 8, "per_device": 4}, "intervals": {"log": 32, "checkpoint": 0, "preview": 0}}
    return TrainConfig.from_dict({**data, **extra})


def test_find_unused_parameters_only_for_a_stream_the_run_never_feeds(tmp_path):
    cfg = _config(tmp_path, conditions={"text": {"name": "hashed-words", "kwargs": {"width": 32, "max_length": 8}}})
    trainer = Trainer(cfg, data=_tiny_data(), device="cpu", resume=False)
    assert not trainer.unused_parameters_possible()  # dropped rows are masked, the stream still runs
    trainer.encoders = {}  # a run that never feeds the text stream
    assert trainer.unused_parameters_possible()
    for name, p in trainer.model.named_parameters():  # ... unless that stream is frozen
        p.requires_grad_("text" not in name.split("."))
    assert not trainer.unused_parameters_possible()


def test_a_nan_loss_stops_the_run_at_the_next_log(tmp_path):
    data = _tiny_data()
    data.latents[:] = float("nan")
    trainer = Trainer(_config(tmp_path), data=data, device="cpu", resume=False)
    with pytest.raises(MupdError, match=r"training loss became nan at 0 images"):
        trainer.fit()
    assert trainer.progress.images_seen == 32  # read at the first log interval, not after every step


def test_the_first_step_checks_the_model_inputs_once(tmp_path):
    """The forward validates nothing (no host syncs); the trainer checks its first micro-batch."""
    data = _tiny_data()
    tokens = torch.randn(16, 3, 32)
    tokens[:, 1] = float("nan")  # precomputed condition tokens with a NaN row
    data.tensors.update(text=tokens, text_mask=torch.ones(16, 3, dtype=torch.bool))
    cfg = _config(tmp_path, conditions={"text": {"name": "hashed-words", "kwargs": {"width": 32, "max_length": 8}}})
    trainer = Trainer(cfg, data=data, device="cpu", resume=False)
    with pytest.raises(MupdError, match=r"conditions\['text'\] contains NaN"):
        trainer.train_step()
    assert trainer.progress.images_seen == 0
