"""``tritoncorr convert``: a published checkpoint to tritoncorr's format
(:func:`tritoncorr.models.convert.convert_checkpoint`), with the report of what each key became."""

from __future__ import annotations

import json
from pathlib import Path

from tritoncorr.cli.common import fail


def _group(keys: list[str]) -> str:
    """Compact display of many keys: all of them when few, else their longest common dotted prefix
    (or two-level prefixes) with counts."""
    if len(keys) <= 4:
        return ", ".join(keys)
    split = [k.split(".") for k in keys]
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    if len(common) >= 2:
        return f"{'.'.join(common)}.* ({len(keys)})"
    groups: dict[str, int] = {}
    for parts in split:
        g = ".".join(parts[:2]) + (".*" if len(parts) > 2 else "")
        groups[g] = groups.get(g, 0) + 1
    return ", ".join(f"{g} ({n})" if n > 1 else g for g, n in groups.items())


def convert_cli(*, src: Path, to: Path, fmt: str, variant: str | None, verbose: bool, report_path: Path | None):
    """``tritoncorr convert``: convert and print the report."""
    from rich.console import Console
    from rich.table import Table

    from tritoncorr.models.convert import ConvertError, convert_checkpoint

    console = Console()
    try:
        report = convert_checkpoint(src, to, fmt, variant)
    except (FileNotFoundError, ConvertError) as err:
        fail(str(err))
    cfg = report.config
    how = f"detected from {report.evidence}" if report.detected else "given by --format"
    console.print(f"[bold]{src}[/] -> [bold]{to}[/]", soft_wrap=True)
    console.print(
        f"format: [bold]{report.format}[/]" + (f" ({cfg.variant})" if cfg.variant else "") + f", {how}", soft_wrap=True
    )
    where = f"under {report.container!r}" if report.container else "at the top level"
    console.print(
        f"state dict {where}"
        + (f", prefix {report.stripped!r} stripped" if report.stripped else "")
        + (
            f"; {len(report.other)} non-tensor entries not converted ("
            + ", ".join(k for k, _ in report.other[:6])
            + (" ...)" if len(report.other) > 6 else ")")
            if report.other
            else ""
        ),
        soft_wrap=True,
    )
    console.print(f"network: {cfg.describe()}", soft_wrap=True)
    t = Table(title="keys")
    t.add_column("what")
    t.add_column("count", justify="right")
    t.add_column("keys")
    t.add_row(
        "mapped (prefix only)",
        str(len(report.mapped)),
        "\n".join(f"{a} -> {b}" for a, b in report.mapped) if verbose else _group([a for a, _ in report.mapped]),
    )
    t.add_row(
        "renamed (layout)",
        str(len(report.renamed)),
        "\n".join(f"{a} -> {b}" for a, b in (report.renamed if verbose else report.renamed[:6]))
        + ("" if verbose or len(report.renamed) <= 6 else f"\n... (+{len(report.renamed) - 6}, --verbose)"),
    )
    for why, ks in report.dropped_by_reason().items():
        t.add_row(f"dropped: {why}", str(len(ks)), "\n".join(ks) if verbose else _group(ks))
    if report.unmapped:
        t.add_row("[bold red]UNMAPPED (no rule)[/]", str(len(report.unmapped)), "\n".join(report.unmapped))
    if report.filled:
        t.add_row("filled with defaults", str(len(report.filled)), _group(report.filled))
    console.print(t)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.to_dict(), indent=1))
        console.print(f"full report: {report_path}")
    console.print(
        f"wrote {to} ({report.summary()}); use it with: tritoncorr eval davis --checkpoint {to}  |  "
        f"tritoncorr propagate VIDEO --mask FIRST.png --checkpoint {to}",
        soft_wrap=True,
    )
    return report
