"""Suite-wide test setup: tiny networks run fastest on one CPU thread (shared helpers live in tests/helpers)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_cpu_thread():
    """Tiny forward passes are up to 100x slower with several threads on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
