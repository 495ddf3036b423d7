"""Fused Triton kernels, each with its PyTorch reference (installed as ``tritoncorr.kernels``).

| function | module | used by |
|---|---|---|
| :func:`knn_propagate` | ``knn_propagate.py`` | label propagation (inference, all methods) |
| :func:`local_correlation`, :func:`local_attention` | ``local_corr.py`` | STT, LIIR/MAST reconstruction |
| :func:`anchor_nll`, :func:`anchor_argmax` | ``anchor_softmax.py`` | DUL training |
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "knn_propagate": "knn_propagate",
    "knn_propagate_reference": "knn_propagate",
    "local_correlation": "local_corr",
    "local_attention": "local_corr",
    "anchor_nll": "anchor_softmax",
    "anchor_argmax": "anchor_softmax",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: importing one kernel family does not import (and compile) the others.
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
