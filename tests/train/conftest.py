"""Training tests run torch on one thread: the tiny models here gain nothing from more, and on a busy machine
OpenMP threads waiting on each other make steps many times slower. Subprocesses get OMP_NUM_THREADS=1 too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
