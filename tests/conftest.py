"""Shared fixtures. `scripted_server` runs a real `assistant serve --backend scripted` on a free port."""

from __future__ import annotations

import pytest
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
