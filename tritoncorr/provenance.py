"""What produced a number: ``provenance.json`` in every training run folder and evaluation output folder.

A record (:func:`collect`) holds:

* ``code``: ``tritoncorr`` version, the git commit of the source tree it was imported from and
  whether that tree had uncommitted changes (``dirty``, with the number of changed files), or
  ``null`` when it is not a git checkout (an installed wheel);
* ``versions``: Python, torch, triton, CUDA (``torch.version.cuda``), numpy;
* ``device``: the accelerator's name (``torch.cuda.get_device_name``) or the CPU model, and the
  number of CPU threads torch uses;
* ``host``, ``platform``, the working directory, the UTC time;
* ``command``: the exact command line (``shlex``-quoted ``sys.argv``, the program as ``tritoncorr``);
* ``checkpoint``: the weights' path and SHA-256 (``null`` for random weights).

An evaluation folder's record also holds ``eval``: the settings its numbers depend on apart from
the weights (:data:`EVAL_SETTINGS`: benchmark, split, resolution, input size, precision and every
propagation field), which ``tritoncorr eval compare`` checks before comparing two folders
(:func:`settings_differences`). A run folder's ``provenance.json`` is ``{"sessions": [record, ...]}``:
one record per start or resume, with the step it started from.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

FILENAME = "provenance.json"
# the evaluation settings that must agree for two folders' numbers to be comparable
EVAL_SETTINGS = ("benchmark", "split", "resolution", "input_size", "precision", "propagation")

__all__ = [
    "EVAL_SETTINGS",
    "FILENAME",
    "collect",
    "file_sha256",
    "git_state",
    "read_provenance",
    "record_run_session",
    "settings_differences",
    "write_eval_provenance",
]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (:func:`tritoncorr.evals.resume.file_sha256` without its ``sha256:`` prefix)."""
    from tritoncorr.evals.resume import file_sha256 as prefixed

    return prefixed(path).removeprefix("sha256:")


def git_state(package_dir: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty", "changed_files", "root"}`` of the git checkout holding the imported
    ``tritoncorr`` package (None when the package does not live in a checkout of this project)."""
    pkg = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(pkg), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or not (Path(top) / "tritoncorr" / "__init__.py").is_file():
        return None  # e.g. site-packages inside some other repository
    if (Path(top) / "tritoncorr").resolve() != pkg.resolve():
        return None  # an installed copy that merely sits inside a checkout (a venv in the repo)
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    changed = [line for line in (status or "").splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(changed), "changed_files": len(changed), "root": top}


def _command() -> str:
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name == "tritoncorr" or Path(argv[0]).parts[-2:] == ("cli", "__main__.py")):
        argv[0] = "tritoncorr"
    return shlex.join(argv)


def versions() -> dict[str, Any]:
    """Python, numpy, torch, CUDA and triton versions (None for what is not installed; triton is read
    from the package metadata, never imported)."""
    from importlib import metadata

    import numpy

    out: dict[str, Any] = {"python": platform.python_version(), "numpy": numpy.__version__}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a dependency
        out["torch"] = None
    try:
        out["triton"] = metadata.version("triton")
    except metadata.PackageNotFoundError:
        out["triton"] = None
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device(device: Any = None) -> dict[str, Any]:
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(dev)
    else:
        name = _cpu_name()
    return {"type": dev.type, "name": name, "cpu_threads": torch.get_num_threads()}


def collect(*, checkpoint: str | Path | None = None, device: Any = None) -> dict[str, Any]:
    """The provenance record of this process (see the module docstring)."""
    from tritoncorr import __version__

    ckpt = None
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir():
            from tritoncorr.engine.checkpoint import resolve_weights_path

            path = resolve_weights_path(path)
        ckpt = {"path": str(path.resolve()), "sha256": file_sha256(path)}
    return {
        "code": {"tritoncorr": __version__, "git": git_state()},
        "versions": versions(),
        "device": _device(device),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cwd": os.getcwd(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(),
        "checkpoint": ckpt,
    }


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_provenance(folder: str | Path) -> dict[str, Any] | None:
    """The ``provenance.json`` of ``folder`` (None when it has none or it is not valid JSON)."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_eval_provenance(
    out: str | Path,
    *,
    benchmark: str,
    checkpoint: str | Path | None,
    model: str,
    preset: str,
    config: Any,
    input_size: tuple[int, int] | None,
    precision: str,
    device: Any = None,
    **settings: Any,
) -> Path:
    """Write ``<out>/provenance.json`` for an evaluation: :func:`collect` plus its ``eval`` settings.

    ``config`` is the ``PropagationConfig`` (all its fields are recorded); ``settings`` adds the
    benchmark's own (``split``, ``resolution``, ``sequences``, ...).
    """
    rec = collect(checkpoint=checkpoint, device=device)
    rec["model"] = model
    rec["eval"] = {
        "benchmark": benchmark,
        "preset": preset,
        "propagation": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config),
        "input_size": list(input_size) if input_size is not None else None,
        "precision": precision,
        **settings,
    }
    return _write_json(Path(out) / FILENAME, rec)


def record_run_session(
    run: str | Path, *, start_step: int, weights: str | Path | None = None, device: Any = None
) -> Path:
    """Append this session (a start or a resume at ``start_step``, from the weights file ``weights``:
    ``init.safetensors``, ``init_from`` or the resumed checkpoint's) to ``<run>/provenance.json``."""
    run = Path(run)
    data = read_provenance(run) or {}
    sessions = data.get("sessions") if isinstance(data.get("sessions"), list) else []
    rec = collect(checkpoint=weights if weights is not None and Path(weights).exists() else None, device=device)
    rec["start_step"] = int(start_step)
    sessions.append(rec)
    return _write_json(run / FILENAME, {"sessions": sessions})


def settings_differences(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """What differs between two evaluation records' :data:`EVAL_SETTINGS` (``"name: A -> B"``);
    propagation fields are listed one by one. Records without ``eval`` settings give no difference."""
    ea = (a or {}).get("eval") or {}
    eb = (b or {}).get("eval") or {}
    if not ea or not eb:
        return []
    diffs = []
    for key in EVAL_SETTINGS:
        va, vb = ea.get(key), eb.get(key)
        if key == "propagation" and isinstance(va, dict) and isinstance(vb, dict):
            for f in sorted(set(va) | set(vb)):
                if va.get(f) != vb.get(f):
                    diffs.append(f"propagation.{f}: {va.get(f)!r} -> {vb.get(f)!r}")
        elif va != vb:
            diffs.append(f"{key}: {va!r} -> {vb!r}")
    return diffs
