"""Every documentation citation in the source tree resolves to a file (and a § section) of the repository.

Rules (the code's citation style):
- ``dul.md``, ``stt.md``, ``liir.md``, ``propagation.md`` (with or without ``docs/methods/``) are the
  method documents in ``docs/methods/``; a path under a top-level folder of the repository
  (``docs/KERNELS.md``) or an upper-case name (``README.md``, ``ARCHITECTURE.md``) is relative to the
  repository root; other names (``OUT/gpu_check.md``) are files the code writes, not citations.
  A ``file.md:123`` citation (with a line number) is an upstream file of a reference repository and
  is not checked here.
- ``§N`` / ``§N.M`` / ranges ``§N.M-N.K`` name a numbered heading of a method document (or, where
  section N has no heading N.M, item M of its numbered list): the one
  named just before it on the line (``stt.md §4.2``, ``LIIR spec §6``), else the first method
  document the file names (its "home" spec, e.g. in its module docstring).

Old-style citations (``design/methods/X.md``, the kernels' ``ARCHITECTURE.md``) are rewritten by
``python tools/fix_citations.py``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from tools.fix_citations import git_files

ROOT = Path(__file__).resolve().parents[1]
METHOD_DOCS = ("dul", "stt", "liir", "propagation")
FIX_HINT = "run `python tools/fix_citations.py` (old-style paths) or correct the citation by hand"

_MD_PATH = re.compile(r"(?<![\w.:/-])((?:[\w.-]+/)*[\w-]+\.md)(:\d+)?")
_METHOD_NAME = re.compile(r"\b(?:docs/methods/)?(dul|stt|liir|propagation)\.md\b|\b(DUL|STT|LIIR)(?:'s)? spec\b")
_SECTION = re.compile(r"§\s?(\d+(?:\.\d+)*)(?:\s?-\s?(\d+(?:\.\d+)*))?")


@cache
def _sections(doc: str) -> frozenset[str]:
    """The numbered headings (``2``, ``2.4``, ...) of ``docs/methods/<doc>.md``."""
    path = ROOT / "docs" / "methods" / f"{doc}.md"
    if not path.is_file():
        return frozenset()
    found, top = set(), None
    for line in path.read_text(encoding="utf-8").splitlines():
        head = re.match(r"#+\s+(\d+(?:\.\d+)*)\.?\s", line)
        if head:
            found.add(head.group(1))
            top = head.group(1).split(".")[0]
        elif top is not None and (item := re.match(r"(\d+)\.\s", line)):
            found.add(f"{top}.{item.group(1)}")  # §N.k may name item k of section N's numbered list
    return frozenset(found)


def _doc_of(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2)).lower()


def _path_problems(rel: str, line_no: int, line: str) -> list[str]:
    out = []
    for m in _MD_PATH.finditer(line):
        path, upstream_line = m.group(1), m.group(2)
        if upstream_line:  # file.md:123 is an upstream repository's file
            continue
        stem, first = Path(path).stem, Path(path).parts[0]
        if path in {f"{d}.md" for d in METHOD_DOCS} or path == f"docs/methods/{stem}.md" and stem in METHOD_DOCS:
            target = ROOT / "docs" / "methods" / f"{stem}.md"
        elif "/" in path and (first == "design" or (ROOT / first).is_dir()) or stem.isupper():
            target = ROOT / path  # a document of the repository (or an old design/ path)
        else:
            continue  # a file name the code writes or reads (``OUT/report.md``), not a citation
        if not target.is_file():
            out.append(f"{rel}:{line_no}: cites {path}, which is not a file of the repository")
    return out


def _section_problems(rel: str, line_no: int, line: str, home: str | None) -> list[str]:
    out = []
    for m in _SECTION.finditer(line):
        before = list(_METHOD_NAME.finditer(line[: m.start()]))
        doc = _doc_of(before[-1]) if before else home
        if doc is None:
            out.append(f"{rel}:{line_no}: §{m.group(1)} names no method document (and the file names none)")
            continue
        for number in filter(None, (m.group(1), m.group(2))):
            if number not in _sections(doc):
                out.append(f"{rel}:{line_no}: §{number} is not a section of docs/methods/{doc}.md")
    return out


def citation_problems() -> list[str]:
    """One message per citation that does not resolve."""
    problems = []
    for path in git_files("*.py"):
        rel = str(path.relative_to(ROOT))
        if rel in ("tools/fix_citations.py", "tests/test_docs.py"):  # their examples are old-style on purpose
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        first = _METHOD_NAME.search(text)
        home = _doc_of(first) if first else None
        for line_no, line in enumerate(text.splitlines(), 1):
            if ".md" in line:
                problems += _path_problems(rel, line_no, line)
            if "§" in line:
                problems += _section_problems(rel, line_no, line, home)
    return problems


def test_method_docs_exist_with_sections():
    for doc in METHOD_DOCS:
        assert _sections(doc), f"docs/methods/{doc}.md is missing or has no numbered sections"


def test_every_citation_resolves():
    problems = citation_problems()
    assert not problems, f"{len(problems)} citation(s) do not resolve ({FIX_HINT}):\n" + "\n".join(problems)


def test_markdown_links_resolve():
    """Relative links of the repository's Markdown files (README, docs/) point to files that exist."""
    problems = []
    for path in git_files("*.md"):
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):  # not in code spans
                target = target.split("#", 1)[0]
                if not target or re.match(r"[a-z]+:", target):
                    continue
                if not (path.parent / target).exists():
                    problems.append(f"{path.relative_to(ROOT)}:{line_no}: links to {target}, which does not exist")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "line, ok",
    [
        ("see stt.md §4.2 and docs/KERNELS.md", True),
        ("see stt.md §42", False),
        ("spec design/methods/dul.md §2", False),
        ("upstream README.md:156-157", True),
        ("LIIR spec §4.1, §6.6", True),
        ("(ARCHITECTURE.md op pattern)", False),
        ("see docs/NOPE.md", False),
        ("writes OUT/gpu_check.md and report.md", True),
    ],
)
def test_checker_flags_what_it_should(line, ok):
    found = _path_problems("x.py", 1, line) + _section_problems("x.py", 1, line, None)
    assert (not found) == ok, found
