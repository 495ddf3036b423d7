"""Rewrite old-style documentation citations in the source tree to files that exist in the repository.

Usage (from the repository root)::

    python tools/fix_citations.py            # rewrite in place, print what changed
    python tools/fix_citations.py --check    # list what would change, exit 1 if anything would

The method specifications used to live outside the repository (``design/methods/X.md``); their
section numbers (``§N``) were kept when they moved to ``docs/methods/X.md``, so only the path changes.
``ARCHITECTURE.md`` as cited by the kernel modules ("op pattern") is ``docs/KERNELS.md``.
``tests/test_docs.py`` checks that every citation resolves and names this script when one does not.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (pattern, replacement) applied to every tracked ``.py`` file.
REWRITES: list[tuple[re.Pattern[str], str]] = [
    # design/methods/dul.md (with or without a leading ../shared/) -> docs/methods/dul.md
    (re.compile(r"(?:\.\./shared/)?design/methods/(\w+)\.md"), r"docs/methods/\1.md"),
    # methods/dul.md (the spec folder's old relative name) -> docs/methods/dul.md
    (re.compile(r"(?<![\w/.])methods/(dul|stt|liir|propagation)\.md"), r"docs/methods/\1.md"),
    # the kernels' "ARCHITECTURE.md op pattern" is documented in docs/KERNELS.md
    (re.compile(r"(?<![\w/])ARCHITECTURE\.md(?= op pattern|\))"), "docs/KERNELS.md"),
]


def git_files(pattern: str, root: Path = ROOT) -> list[Path]:
    """The files matching ``pattern`` that git tracks below ``root``, plus the untracked ones it does not
    ignore, sorted (the tree as it is, not as committed)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", pattern],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(root / p for p in out.split() if (root / p).is_file())


def tracked_python_files(root: Path = ROOT) -> list[Path]:
    """The ``.py`` files of ``git_files``, this script and its test excluded."""
    skip = {Path(__file__).resolve(), (root / "tests" / "test_docs.py").resolve()}
    return [p for p in git_files("*.py", root) if p.resolve() not in skip]


def rewrite(text: str) -> str:
    """``text`` with every old-style citation rewritten."""
    for pattern, repl in REWRITES:
        text = pattern.sub(repl, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    changed = []
    for path in tracked_python_files():
        old = path.read_text(encoding="utf-8")
        new = rewrite(old)
        if new != old:
            changed.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "would rewrite" if args.check else "rewrote"
    for p in changed:
        print(f"{verb} {p}")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
