"""Alignment tests train many tiny models: one torch thread is as fast as two for ops this small and
far faster when the machine's cores are shared, so these tests use one and restore the setting."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
