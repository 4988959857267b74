"""The data tests run tiny models whose ops are too small to gain from intra-op threads; one thread
avoids OpenMP barrier stalls when the cores are shared (the session setting is restored after)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
