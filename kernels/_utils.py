"""Helpers shared by every kernel module: backend choice, input checks, launch sizing.

Backend selection (see docs/ENVIRONMENT.md for the table of environment variables):

=========================  ===================================================================
``TRITONCORR_BACKEND``     meaning
=========================  ===================================================================
``auto`` (default)         Triton kernels for CUDA tensors, the PyTorch path for CPU tensors
``triton``                 Triton kernels always; on CPU tensors this needs ``TRITON_INTERPRET=1``
``torch``                  the PyTorch path on every device
=========================  ===================================================================
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

BACKENDS = ("auto", "triton", "torch")


def backend() -> str:
    """The backend asked for by ``TRITONCORR_BACKEND`` (read at each call, so tests can set it)."""
    value = os.environ.get("TRITONCORR_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"TRITONCORR_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(*tensors: torch.Tensor) -> bool:
    """Decide, from the backend setting and the tensors' device, whether to launch Triton.

    Raises a clear error when Triton is forced on CPU tensors without the interpreter.
    """
    choice = backend()
    on_cuda = all(t.is_cuda for t in tensors)
    if choice == "torch":
        return False
    if choice == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("TRITONCORR_BACKEND=triton but triton is not installed")
    if not on_cuda and not interpreting():
        raise RuntimeError(
            "TRITONCORR_BACKEND=triton with CPU tensors needs TRITON_INTERPRET=1 "
            "(Triton's interpreter); or use CUDA tensors"
        )
    return True


def autotune_enabled() -> bool:
    """Autotuning is skipped under the interpreter and when ``TRITONCORR_AUTOTUNE=0``."""
    return not interpreting() and os.environ.get("TRITONCORR_AUTOTUNE", "1") != "0"


def check_tensor(
    name: str,
    t: torch.Tensor,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
) -> None:
    """Raise ``ValueError``/``TypeError`` naming ``name`` when ``t`` has the wrong rank/dtype/device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; expected one of {allowed}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all inputs must share a device)")


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def poison_enabled() -> bool:
    """``TRITONCORR_POISON=1`` (tests) fills kernel outputs with NaN before launch, so unwritten elements fail."""
    return os.environ.get("TRITONCORR_POISON", "0") not in ("", "0")


def alloc_output(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a kernel output (NaN-filled when poisoning is on, for float dtypes; -1 for integers)."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if poison_enabled():
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out
