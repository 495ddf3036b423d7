"""Test configuration shared by the whole suite.

Triton decides at decoration time whether kernels run in its CPU interpreter, so
``TRITON_INTERPRET=1`` is set here, before any kernel module is imported, whenever no CUDA device
is present (CI, this machine). On a GPU machine the real kernels are used and ``-m gpu`` selects
the GPU tests.

``TRITONCORR_TEST_BLOCK_TRITON=1`` runs the suite as on a machine without Triton: an import hook
makes ``import triton`` (and ``triton.*``) raise ImportError, and the tests marked ``interpreter``
or ``aot`` are skipped. Every other test must pass that way.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path

BLOCK_TRITON = os.environ.get("TRITONCORR_TEST_BLOCK_TRITON", "0") not in ("", "0")


class _TritonBlocker(importlib.abc.MetaPathFinder):
    """``import triton`` / ``triton.*`` raise ImportError, as where Triton is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError(f"No module named {name!r} (blocked by TRITONCORR_TEST_BLOCK_TRITON=1)", name=name)
        return None


if BLOCK_TRITON:  # before torch or tritoncorr can import triton
    sys.meta_path.insert(0, _TritonBlocker())

import pytest  # noqa: E402
import torch  # noqa: E402

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


@pytest.fixture(autouse=True)
def _forget_drawn_seeds():
    from tests.kernel_harness import DRAWN_SEEDS

    DRAWN_SEEDS.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that drew fresh random inputs (``kernel_harness.fresh_generator``) reports their seeds."""
    report = (yield).get_result()
    from tests.kernel_harness import DRAWN_SEEDS

    if report.failed and DRAWN_SEEDS:
        report.sections.append(("random inputs", f"fresh_generator seeds, in order: {DRAWN_SEEDS} (pass seed=...)"))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="needs Triton (TRITONCORR_TEST_BLOCK_TRITON=1 blocks it)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if BLOCK_TRITON and ("interpreter" in item.keywords or "aot" in item.keywords):
            item.add_marker(skip_triton)


@pytest.fixture
def progress_stages(monkeypatch):
    """Records what the runner's progress display (``tritoncorr.evaluate.VideoProgress``) is told during the
    test: ``stages`` (the stage names in order, repeats collapsed), ``total`` (the frame steps announced, the
    ETA's basis) and ``done`` (the steps advanced)."""
    from types import SimpleNamespace

    from tritoncorr import evaluate

    record = SimpleNamespace(stages=[], total=0, done=0)

    class Recording(evaluate.VideoProgress):
        def __enter__(self):
            record.total += self.passes * sum(self.lengths)
            return super().__enter__()

        def stage(self, text: str) -> None:
            if not record.stages or record.stages[-1] != text:
                record.stages.append(text)
            super().stage(text)

        def advance(self, n: int) -> None:
            record.done += n
            super().advance(n)

        def frame(self, t: int = 0) -> None:
            record.done += 1
            super().frame(t)

    monkeypatch.setattr(evaluate, "VideoProgress", Recording)
    return record
