"""Suite-wide test setup: tiny networks run fastest on one CPU thread, and tests/ holds shared helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/edm_pickle_writer.py


@pytest.fixture(autouse=True, scope="session")
def _one_cpu_thread():
    """Tiny forward passes are up to 100x slower with several threads on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
