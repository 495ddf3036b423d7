"""What every command does the same way: fail on bad input, resolve ``--device``, find a dataset's root."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr (one line per line of ``message``, no markup read in it) and exit
    with ``code`` (2: bad input; ``tritoncorr train`` exits 1 when the run diverged)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True).print(Text("error:", style="red") + Text(f" {message}"), highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def resolve_device(device: str):
    """``--device`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``: CUDA when available) -> ``torch.device``;
    exits 2 when CUDA is asked for and absent, or the name is not a device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        fail(f"--device must be cpu, cuda or auto, got {device!r}")


def dataset_root(root: Path | None, what: str, *names: str) -> Path:
    """``--root``, or the first ``$TRITONCORR_DATA/<name>`` / ``~/.cache/tritoncorr/<name>`` over ``names``
    (:func:`tritoncorr.data.config.find_dataset`); exits 2 when there is none or it is not a folder."""
    from tritoncorr.data.config import find_dataset

    if root is None:
        root = find_dataset(*names)
        if root is None:
            fail(
                f"no {what} found under $TRITONCORR_DATA or ~/.cache/tritoncorr (looked for {', '.join(names)}): "
                "pass --root"
            )
    if not Path(root).is_dir():
        fail(f"{what} root {root} does not exist")
    return Path(root)
