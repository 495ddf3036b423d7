"""``tritoncorr weights list|download|verify``: the published checkpoints of :mod:`tritoncorr.weights`."""

from __future__ import annotations

from tritoncorr.cli.common import fail
from tritoncorr.weights import REGISTRY, WeightsError, cache_root, cached, resolve_checkpoint, verify


def weights_list_cli() -> None:
    """``tritoncorr weights list``."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"Published checkpoints (cache: {cache_root() / 'weights'})")
    t.add_column("name", no_wrap=True)
    t.add_column("what")
    t.add_column("J&F", justify="right")
    t.add_column("licence")
    t.add_column("cached")
    for w in REGISTRY.values():
        jf = f"{w.davis_jf:.1f}" if w.davis_jf is not None else "-"
        t.add_row(w.name, w.method, jf, w.licence, "yes" if cached(w.name) else "no")
    console.print(t)
    console.print("J&F: DAVIS-2017 val J&F-Mean (%) as the authors report it. Sources:")
    for w in REGISTRY.values():
        src = f"inside the package ({w.package_file})" if w.package_file else w.url
        console.print(f"  {w.name}: {src}" + (f"; {w.note}" if w.note else ""), soft_wrap=True, highlight=False)
        if w.measured:
            console.print(f"    measured here: {w.measured}", soft_wrap=True, highlight=False)


def weights_download_cli(names: list[str]) -> None:
    """``tritoncorr weights download NAME|URL|hf://... ...``."""
    from rich.console import Console

    console = Console()
    for name in names:
        try:
            path = resolve_checkpoint(name)
        except (WeightsError, FileNotFoundError) as err:
            fail(str(err))
        console.print(f"{name}: {path}", soft_wrap=True)


def weights_verify_cli(names: list[str]) -> None:
    """``tritoncorr weights verify [NAME ...]`` (default: every cached one)."""
    from rich.console import Console
    from rich.table import Table

    todo = names or [n for n in REGISTRY if cached(n)]
    t = Table(title="SHA-256 check")
    for c in ("name", "file", "sha256", "status"):
        t.add_column(c)
    failed = []
    for name in todo:
        try:
            for file, digest, status in verify(name):
                t.add_row(name, file, digest, status)
        except WeightsError as err:
            t.add_row(name, "", "", f"[red]{err}[/]")
            failed.append(name)
    Console().print(t)
    if failed:
        fail(f"verification failed for {', '.join(failed)}")
