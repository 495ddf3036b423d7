"""Helpers for kernel tests: per-dtype tolerances, verbose comparison, fresh random inputs.

Every kernel test compares against the PyTorch reference of its module, computed on upcast
(float64 or float32) copies of the inputs. The tolerance depends on the dtype of the inputs
(FlagGems' table idea): low-precision inputs are rounded before both computations, so the
remaining error is accumulation order and the kernel's own rounding.
"""

from __future__ import annotations

import torch

# (atol, rtol) for outputs computed from inputs of this dtype (fp32 accumulation in kernels).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return TOLERANCES[dtype]


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, name: str = "output") -> None:
    """Like ``torch.testing.assert_close`` but reports how many elements differ and the first indices.

    NaN in ``actual`` (e.g. an unwritten poisoned element) always counts as a mismatch.
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    bad = ~((a - e).abs() <= atol + rtol * e.abs())
    bad |= torch.isnan(a) & ~torch.isnan(e)
    n_bad = int(bad.sum())
    if n_bad:
        idx = bad.nonzero()[:5].tolist()
        samples = ", ".join(f"{tuple(i)}: got {a[tuple(i)].item():.6g} want {e[tuple(i)].item():.6g}" for i in idx)
        max_err = (a - e).abs()[bad & ~torch.isnan(a)].max().item() if (bad & ~torch.isnan(a)).any() else float("nan")
        raise AssertionError(
            f"{name}: {n_bad}/{a.numel()} elements differ (atol={atol}, rtol={rtol}, max abs err {max_err:.3g}); first: {samples}"
        )


def fresh_generator(seed: int | None = None) -> torch.Generator:
    """A generator with a fresh random seed (printed by the caller on failure) unless one is given."""
    g = torch.Generator()
    g.manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed)
    return g
