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

import math
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
    """True when ``import triton`` succeeds (False on machines without it, e.g. macOS/Windows)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def upcast_bf16_dot(dtype: torch.dtype) -> bool:
    """Whether a Triton kernel must widen bf16 ``tl.dot`` operands to fp32 (the kernels' ``UPCAST``).

    Only under Triton's CPU interpreter: Triton 3.9's interpreter multiplies the raw uint16 storage of
    bf16 operands. The products of bf16 values are exact in fp32, so the widened dot gives the same
    values; compiled GPU code never widens (it keeps bf16 tensor-core dots).
    """
    return interpreting() and dtype == torch.bfloat16


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


def check_int(name: str, value, lo: int, hi: int | None, *, what: str = "") -> int:
    """``value`` as an int in ``lo..hi`` (``hi=None``: no upper bound) (``TypeError`` for a non-int or
    bool, ``ValueError`` out of range)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if hi is None and value < lo:
        raise ValueError(f"{name}={value} must be >= {lo}{what}")
    if hi is not None and not lo <= value <= hi:
        raise ValueError(f"{name}={value} must be in {lo}..{hi}{what}")
    return value


def check_temperature(temperature) -> float:
    """``temperature`` as a finite float > 0, else ``ValueError`` naming it."""
    ok = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not (ok and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")
    return float(temperature)


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


# ---------------------------------------------------------------------------------------------
# shared by the propagation families (knn_propagate, window_propagate)
# ---------------------------------------------------------------------------------------------

#: Largest window radius (feature cells) of the propagation families.
MAX_RADIUS = 32


def check_frames(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, max_labels: int) -> None:
    """Shapes, dtypes and devices of (query (C, h, w), keys (N, C, h, w), values (N, L, h, w))."""
    check_tensor("query", query, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("keys", keys, ndim=4, dtypes=FLOAT_DTYPES, device=query.device)
    check_tensor("values", values, ndim=4, dtypes=FLOAT_DTYPES + (torch.float64,), device=query.device)
    if keys.dtype != query.dtype:
        raise TypeError(f"keys dtype {keys.dtype} differs from query dtype {query.dtype}; cast one of them")
    c, h, w = query.shape
    n = keys.shape[0]
    if min(c, h, w) < 1:
        raise ValueError(f"query must have C, h, w >= 1, got shape {tuple(query.shape)}")
    if n < 1:
        raise ValueError("keys must hold at least one context frame (N >= 1)")
    if tuple(keys.shape[1:]) != (c, h, w):
        raise ValueError(f"keys shape {tuple(keys.shape)} must be (N, C, h, w) = (N, {c}, {h}, {w}) to match query")
    if values.shape[0] != n or tuple(values.shape[2:]) != (h, w):
        raise ValueError(f"values shape {tuple(values.shape)} must be (N, L, h, w) = ({n}, L, {h}, {w})")
    if not 1 <= values.shape[1] <= max_labels:
        raise ValueError(f"number of label channels L={values.shape[1]} must be in 1..{max_labels}")


def topk_lowest_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row, ties broken towards the lower column. scores (Q, M) -> values, indices (Q, min(k, M)).

    ``torch.topk`` picks an arbitrary member among equal scores. Asking for k + 1 shows whether the
    k-th value is tied with a left-out one; only those rows (rare for real features, common with
    duplicated frames) are redone with a stable sort. A tie at -inf (fewer candidates than k) needs
    no fix: those entries get weight 0.
    """
    m = scores.shape[1]
    if k >= m:
        srt = torch.sort(scores, dim=1, descending=True, stable=True)
        return srt.values, srt.indices
    top_v, top_i = torch.topk(scores, k + 1, dim=1)
    fix = (top_v[:, k] == top_v[:, k - 1]) & torch.isfinite(top_v[:, k])
    top_v, top_i = top_v[:, :k], top_i[:, :k]
    if bool(fix.any()):
        rows = fix.nonzero()[:, 0]
        top_v[rows], top_i[rows] = _lowest_index_among_ties(scores[rows], top_v[rows, k - 1], k)
    return top_v, top_i


def _lowest_index_among_ties(scores: torch.Tensor, kth: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k of a stable descending sort of each row of ``scores`` (R, M), given each row's k-th
    largest value ``kth`` (R,), without sorting the rows: every score above ``kth`` (fewer than k), then
    the lowest-indexed scores equal to it, ordered by value (ties by index). -> values, indices (R, k).

    With 16-bit features many candidates share the k-th score (bfloat16 resolves 1/256 near a cosine of
    1), and a full sort of those rows was most of the propagation time.
    """
    above = scores > kth[:, None]
    tied = scores == kth[:, None]
    needed = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= needed))
    cols = chosen.nonzero()[:, 1].view(scores.shape[0], k)  # ascending column order per row
    srt = torch.sort(scores.gather(1, cols), dim=1, descending=True, stable=True)
    return srt.values, cols.gather(1, srt.indices)
