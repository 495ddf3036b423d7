"""Ahead-of-time compile check: every Triton kernel of the package, compiled for sm_80 and sm_90.

Compiling needs no GPU: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` returns
PTX and a cubin, and the ``cuobjdump`` shipped in the triton wheel reports registers, local memory
(spills), stack and shared memory of the cubin. ``ptxas -v`` on the PTX also reports spill bytes.

Each kernel module declares ``AOT_SPECS``: a list of :class:`AotSpec`, one per kernel and
representative constexpr configuration (the configurations the launchers actually use).
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

KERNEL_MODULES = (
    "tritoncorr.kernels.knn_propagate",
    "tritoncorr.kernels.local_corr",
    "tritoncorr.kernels.anchor_softmax",
)
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
    error: str = ""


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
            capture_output=True, text=True, check=True,
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
                capture_output=True, text=True,
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
        return AotRecord(spec.name, f"sm_{arch}", usage["REG"], spills, shared, usage["STACK"], spec.num_warps)
    except Exception as exc:  # the report shows the failure instead of hiding the other kernels
        return AotRecord(spec.name, f"sm_{arch}", -1, -1, -1, -1, spec.num_warps, error=f"{type(exc).__name__}: {exc}")


def all_specs() -> list[AotSpec]:
    specs: list[AotSpec] = []
    for module_name in KERNEL_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # a kernel family not written yet
                continue
            raise
        specs.extend(getattr(module, "AOT_SPECS", []))
    return specs


def compile_report(archs: tuple[int, ...] = ARCHS, specs: list[AotSpec] | None = None) -> list[AotRecord]:
    """Compile every spec for every arch; one record per (kernel, arch)."""
    specs = all_specs() if specs is None else specs
    return [compile_spec(spec, arch) for spec in specs for arch in archs]
