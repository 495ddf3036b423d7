"""Fused Triton kernels, each with its PyTorch reference (installed as ``tritoncorr.kernels``).

| function | package / module | used by |
|---|---|---|
| :func:`knn_propagate` | ``knn_propagate/`` | label propagation, top-k (CRW / DUL / STT inference) |
| :func:`window_propagate` | ``window_propagate/`` | label propagation, full window + compactness prior (MAST / LIIR inference) |
| :func:`local_correlation`, :func:`local_attention` | ``local_corr.py`` | STT, LIIR/MAST reconstruction |
| :func:`anchor_nll`, :func:`anchor_argmax` | ``anchor_softmax/`` | DUL training |
| :func:`anchor_lse` | ``anchor_softmax/`` | LIIR's inter-video bank (log-sum-exp over banked points) |

Each family package holds ``reference.py`` (plain PyTorch, the definition of correctness), a PyTorch
path for CPU tensors (``torch_path.py``), and ``triton_kernels.py`` with every ``@triton.jit`` kernel,
its launcher, its ``torch.library.triton_op`` and ``aot_specs()``. ``triton_kernels`` is imported
only when a kernel is launched or compiled: this package and every PyTorch path work without Triton.

The functions are imported eagerly: a submodule and its public function share a name
(``knn_propagate``), and importing the submodule would otherwise shadow the function.
"""

from tritoncorr.kernels.anchor_softmax import (
    anchor_argmax,
    anchor_argmax_reference,
    anchor_lse,
    anchor_nll,
    anchor_nll_reference,
    anchor_soft_assignment,
)
from tritoncorr.kernels.knn_propagate import KnnSearch, knn_propagate_dense, knn_propagate_reference
from tritoncorr.kernels.knn_propagate import knn_propagate as _knn_propagate_fn
from tritoncorr.kernels.local_corr import (
    local_attention,
    local_attention_reference,
    local_correlation,
    local_correlation_reference,
)
from tritoncorr.kernels.window_propagate import WindowSearch, window_propagate, window_propagate_reference

knn_propagate = _knn_propagate_fn

__all__ = [
    "KnnSearch",
    "WindowSearch",
    "anchor_argmax",
    "anchor_argmax_reference",
    "anchor_lse",
    "anchor_nll",
    "anchor_nll_reference",
    "anchor_soft_assignment",
    "knn_propagate",
    "knn_propagate_dense",
    "knn_propagate_reference",
    "local_attention",
    "local_attention_reference",
    "local_correlation",
    "local_correlation_reference",
    "window_propagate",
    "window_propagate_reference",
]
