"""Ahead-of-time compile check: every Triton kernel of the package, compiled for sm_80 and sm_90.

Compiling needs no GPU: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` returns
PTX and a cubin, and the ``cuobjdump`` shipped in the triton wheel reports registers, local memory
(spills), stack and shared memory of the cubin. ``ptxas -v`` on the PTX also reports spill bytes.

Each kernel family's ``triton_kernels`` module has ``aot_specs()``: a list of :class:`AotSpec`, one per
kernel and constexpr configuration the launchers use. The report counts the tensor-core
instructions of each compiled kernel in its PTX: ``mma.sync`` (Ampere-style warp MMA, sm_80 and up)
and ``wgmma.mma_async`` (Hopper warpgroup MMA, sm_90a), so that "the hot kernels run on tensor
cores" holds without a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

#: The kernel families (packages under kernels/); each has a ``triton_kernels`` module with ``aot_specs()``.
KERNEL_FAMILIES = ("knn_propagate", "window_propagate", "local_corr", "anchor_softmax")
ARCHS = (80, 90)


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One kernel in one launch configuration.

    ``signature`` maps every argument name of the ``@triton.jit`` function to a Triton type string
    ("*fp32", "*bf16", "i32", "i64", "fp32", "constexpr"); ``constexprs`` gives the constexpr values.
    """

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3


@dataclasses.dataclass
class AotRecord:
    kernel: str
    arch: str
    registers: int
    spills: int
    shared_bytes: int
    stack_bytes: int
    num_warps: int
    mma: int = 0
    wgmma: int = 0
    error: str = ""


def tensor_core_counts(ptx: str) -> tuple[int, int]:
    """``(mma.sync, wgmma.mma_async)`` instruction counts in a PTX listing."""
    return len(re.findall(r"\bmma\.sync\.", ptx)), len(re.findall(r"\bwgmma\.mma_async\.", ptx))


def _triton_bin(tool: str) -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool


def _resource_usage(cubin: bytes) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run(
            [str(_triton_bin("cuobjdump")), "--dump-resource-usage", path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(path)
    usage: dict[str, int] = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", out)
        usage[key] = int(m.group(1)) if m else 0
    return usage


def _ptxas_spills(ptx: str, arch: int) -> int | None:
    """Spill bytes (stores + loads) reported by ``ptxas -v``; None when no ptxas can read the PTX."""
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    for tool in ("ptxas-blackwell", "ptxas"):
        exe = _triton_bin(tool)
        if not exe.exists():
            continue
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "k.ptx"
            src.write_text(ptx)
            proc = subprocess.run(
                [str(exe), "-v", "--gpu-name", gpu, str(src), "-o", str(Path(d) / "k.cubin")],
                capture_output=True,
                text=True,
            )
        if proc.returncode != 0:
            continue
        stores = sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", proc.stderr))
        loads = sum(int(x) for x in re.findall(r"(\d+) bytes spill loads", proc.stderr))
        return stores + loads
    return None


def compile_spec(spec: AotSpec, arch: int) -> AotRecord:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        src = ASTSource(spec.fn, spec.signature, constexprs=spec.constexprs)
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
        usage = _resource_usage(compiled.asm["cubin"])
        spills = usage["LOCAL"]
        ptxas = _ptxas_spills(compiled.asm["ptx"], arch)
        if ptxas is not None:
            spills = max(spills, ptxas)
        shared = max(usage["SHARED"], int(getattr(compiled.metadata, "shared", 0) or 0))
        mma, wgmma = tensor_core_counts(compiled.asm["ptx"])
        return AotRecord(
            spec.name, f"sm_{arch}", usage["REG"], spills, shared, usage["STACK"], spec.num_warps, mma, wgmma
        )
    except Exception as exc:  # the report shows the failure instead of hiding the other kernels
        return AotRecord(spec.name, f"sm_{arch}", -1, -1, -1, -1, spec.num_warps, error=f"{type(exc).__name__}: {exc}")


def family_specs(family: str) -> list[AotSpec]:
    """The AOT specs of one kernel family (imports its Triton kernels; ``family`` is one of
    :data:`KERNEL_FAMILIES`, never a name read from outside)."""
    if family not in KERNEL_FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; one of {', '.join(KERNEL_FAMILIES)}")
    return importlib.import_module(f"tritoncorr.kernels.{family}.triton_kernels").aot_specs()


def all_specs() -> list[AotSpec]:
    return [spec for family in KERNEL_FAMILIES for spec in family_specs(family)]


def compile_report(archs: tuple[int, ...] = ARCHS, specs: list[AotSpec] | None = None) -> list[AotRecord]:
    """Compile every spec for every arch; one record per (kernel, arch)."""
    specs = all_specs() if specs is None else specs
    return [compile_spec(spec, arch) for spec in specs for arch in archs]
