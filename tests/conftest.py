"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_hugging_face_network(tmp_path_factory, monkeypatch):
    """Tests never touch the network: the Hugging Face Hub is offline and its cache an empty
    folder (tests that need weights build their own cache, see tiny.write_hf_cache)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "empty_hf_cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep each test on one intra-op thread (2 cores shared by 2 xdist workers)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
