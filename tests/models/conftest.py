"""Model tests run torch on one thread: on a shared 2-core machine two OpenMP threads oversubscribe
the CPU and one forward/backward pass becomes ~30x slower; the previous setting is restored after each test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
