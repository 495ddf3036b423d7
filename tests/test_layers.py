"""The layers point one way (docs/ARCHITECTURE.md): read from every import statement of the source tree,
including the imports inside functions.

- ``kernels/`` (installed as ``tritoncorr.kernels``) imports nothing of ``tritoncorr.methods``,
  ``tritoncorr.engine`` or ``tritoncorr.data``: a kernel family is its kernels, launchers, op and
  reference, usable without the training code;
- ``evals/`` (``tritoncorr.evals``: benchmark readers, label codecs, metrics) imports nothing of the
  runner (``tritoncorr.evaluate``, ``tritoncorr.video``, the CLI), the propagation, the methods or
  the engine: the runner drives the benchmarks, not the reverse;
- ``tritoncorr/models/`` (networks, weight loading and conversion) imports nothing of ``tritoncorr.methods``;
- ``tritoncorr/engine/`` imports nothing of ``tritoncorr.methods``: methods use the engine (its config
  helpers, checkpoints, the method contract ``tritoncorr.engine.method``), so the reverse would be a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (folder, its package name, forbidden module prefixes)
RULES = [
    ("kernels", "tritoncorr.kernels", ("tritoncorr.methods", "tritoncorr.engine", "tritoncorr.data")),
    (
        "evals",
        "tritoncorr.evals",
        (
            "tritoncorr.evaluate",
            "tritoncorr.video",
            "tritoncorr.cli",
            "tritoncorr.propagation",
            "tritoncorr.methods",
            "tritoncorr.engine",
        ),
    ),
    ("tritoncorr/models", "tritoncorr.models", ("tritoncorr.methods",)),
    ("tritoncorr/engine", "tritoncorr.engine", ("tritoncorr.methods",)),
]

#: Rules another branch of this session is still fixing, with the reason (empty once they all hold).
PENDING: dict[str, str] = {}


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path``, a module of ``package`` (its own
    package, e.g. ``tritoncorr.kernels.knn_propagate``); relative imports are resolved against it."""
    base = package.split(".")
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                module = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


def violations(folder: str, package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        own = ".".join([package, *path.relative_to(ROOT / folder).parent.parts])
        for line, module in imported_modules(path, own):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append((str(path.relative_to(ROOT)), line, module))
    # one message per import statement: ``from a.b import c`` is reported as a.b, not also as a.b.c
    first: dict[tuple[str, int], str] = {}
    for file, line, module in sorted(found, key=lambda f: len(f[2])):
        first.setdefault((file, line), module)
    return [f"{file}:{line} imports {module}" for (file, line), module in sorted(first.items())]


@pytest.mark.parametrize(
    "folder, package, forbidden",
    [
        pytest.param(
            *rule,
            id=rule[0],
            marks=[pytest.mark.xfail(strict=True, reason=PENDING[rule[0]])] if rule[0] in PENDING else [],
        )
        for rule in RULES
    ],
)
def test_layer_imports(folder, package, forbidden):
    found = violations(folder, package, forbidden)
    assert not found, f"{folder}/ must not import {', '.join(forbidden)}:\n" + "\n".join(found)


def test_import_reader_sees_relative_and_lazy_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from . import _utils\nfrom ..engine import config\n\ndef f():\n    import tritoncorr.methods.dul\n")
    mods = [m for _, m in imported_modules(src, "tritoncorr.kernels.fam")]
    assert "tritoncorr.kernels.fam._utils" in mods and "tritoncorr.kernels.engine.config" in mods
    assert "tritoncorr.methods.dul" in mods


def test_only_the_cli_layer_imports_typer():
    """The command line is one layer (``tritoncorr/cli/``): library modules report bad input with exceptions,
    and only the CLI turns them into ``error: ...`` and an exit status."""
    found = []
    for folder, package in (
        ("tritoncorr", "tritoncorr"),
        ("kernels", "tritoncorr.kernels"),
        ("evals", "tritoncorr.evals"),
    ):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder)
            if folder == "tritoncorr" and rel.parts[0] == "cli":
                continue
            own = ".".join([package, *rel.parent.parts])
            found += [
                f"{path.relative_to(ROOT)}:{line} imports {m}"
                for line, m in imported_modules(path, own)
                if m == "typer" or m.startswith("typer.")
            ]
    assert not found, "only tritoncorr/cli/ may import typer:\n" + "\n".join(found)
