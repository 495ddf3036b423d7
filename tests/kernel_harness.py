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


def assert_close_verbose(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, name: str = "output"
) -> None:
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


#: The seeds :func:`fresh_generator` drew in the running test (conftest clears it before each test and
#: adds it to the report of a failed one, so a failure on fresh inputs can be replayed with ``seed=``).
DRAWN_SEEDS: list[int] = []


def fresh_generator(seed: int | None = None) -> torch.Generator:
    """A generator with a fresh random seed (recorded in :data:`DRAWN_SEEDS`) unless one is given."""
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        DRAWN_SEEDS.append(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


_AOT_SCRIPT = """
import dataclasses, json, sys
from tritoncorr.kernels.aot import compile_report, family_specs

family, fixed_only = sys.argv[1], sys.argv[2] == "1"
specs = family_specs(family)
if fixed_only:
    from importlib import import_module
    specs = import_module(f"tritoncorr.kernels.{family}.triton_kernels").aot_specs(fixed_only=True)
print(json.dumps({"n_specs": len(specs), "records": [dataclasses.asdict(r) for r in compile_report(specs=specs)]}))
"""


def check_op_settings(family: str, settings: type) -> None:
    """The ops of a propagation family (``tritoncorr::<family>_windowed`` and, where triton is installed,
    ``tritoncorr::<family>``) take ``(query, keys, values)`` then the fields of its settings dataclass
    in order (what ``settings.op_args()`` passes), then any op-specific arguments."""
    import dataclasses
    from importlib import import_module

    from tritoncorr.kernels._utils import triton_available

    ops = [getattr(torch.ops.tritoncorr, f"{family}_windowed").default]
    if triton_available():
        import_module(f"tritoncorr.kernels.{family}.triton_kernels")  # registers the triton_op
        ops.append(getattr(torch.ops.tritoncorr, family).default)
    expected = ["query", "keys", "values", *(f.name for f in dataclasses.fields(settings))]
    for op in ops:
        names = [a.name for a in op._schema.arguments]
        assert names[: len(expected)] == expected, f"{op}: {names}"


def check_aot_family(family: str, *, fixed_only: bool = False) -> None:
    """Compile ``tritoncorr.kernels.<family>.triton_kernels.aot_specs()`` for sm_80 and sm_90 in a fresh
    interpreter (under TRITON_INTERPRET=1, set by conftest, kernels cannot be compiled) and assert: no
    error, 0 spill bytes, and tensor-core instructions in every bf16 configuration (``wgmma`` on sm_90,
    ``mma.sync`` on sm_80)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT, family, "1" if fixed_only else "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    records = out["records"]
    assert len(records) == 2 * out["n_specs"]
    for r in records:
        assert not r["error"], f"{r['kernel']} {r['arch']}: {r['error']}"
        assert r["spills"] == 0, f"{r['kernel']} {r['arch']}: {r['spills']} spill bytes ({r['registers']} registers)"
    bf16 = [r for r in records if "bf16" in r["kernel"]]
    assert bf16, f"{family}: no bf16 configuration to check for tensor-core instructions"
    missing = [(r["kernel"], r["arch"]) for r in bf16 if (r["wgmma"] if r["arch"] == "sm_90" else r["mma"]) == 0]
    assert not missing, f"bf16 configurations without tensor cores (wgmma on sm_90, mma.sync on sm_80): {missing}"
