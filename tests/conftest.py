"""Test configuration shared by the whole suite.

Triton decides at decoration time whether kernels run in its CPU interpreter, so
``TRITON_INTERPRET=1`` is set here, before any kernel module is imported, whenever no CUDA device
is present (CI, this machine). On a GPU machine the real kernels are used and ``-m gpu`` selects
the GPU tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; the test is skipped cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """torch on one thread for the test (restored after): on a loaded 2-core machine OpenMP spin-waits
    dominate tiny convolutions, and one thread is also deterministic (bit-exact resume comparisons)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def triton_backend(monkeypatch):
    """Route the public kernel functions to the Triton kernels (interpreter on CPU) and poison outputs."""
    monkeypatch.setenv("TRITONCORR_BACKEND", "triton")
    monkeypatch.setenv("TRITONCORR_POISON", "1")
    yield


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONCORR_BACKEND", "torch")
    yield


@pytest.fixture
def kernel_device() -> torch.device:
    return torch.device("cuda" if HAS_CUDA else "cpu")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
