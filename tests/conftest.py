"""Shared fixtures. Tests run offline on the CPU; real sample data comes from ../shared/data
(or $MUPD_SAMPLE_DATA) and tests that need it skip with a reason when it is absent."""

from __future__ import annotations

import pytest
import torch

from mupd.settings import sample_data_dir

torch.set_num_threads(1)  # tiny models: thread overhead dominates; 2-process tests share the 2 cores


@pytest.fixture(scope="session")
def sample_data():
    path = sample_data_dir()
    if path is None:
        pytest.skip("real sample data not found: set MUPD_SAMPLE_DATA or put it at ../shared/data")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
