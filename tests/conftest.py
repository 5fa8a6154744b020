"""Shared fixtures. `scripted_server` runs a real `assistant serve --backend scripted` on a free port."""

from __future__ import annotations

import os

# One torch/OpenMP thread in every test process and what it starts, unless the caller says otherwise:
# the suite runs a process per core, and a second spin-waiting thread per process on a shared box
# makes the tiny models several times slower (tests/test_moshivis.py beside a busy core: 104 s with
# torch's default threads, 60 s with one). Set before any test module imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from server_utils import start_server


@pytest.fixture
def scripted_server():
    """(host, port) of a fresh scripted-backend server; see tests/server_utils.py for options."""
    with start_server("--backend", "scripted") as address:
        yield address


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread is faster, and two spin-waiting threads on a shared 2-core box are slow."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
