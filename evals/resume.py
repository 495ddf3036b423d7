"""Resumable evaluation output folders (``tritoncorr eval davis|vip|jhmdb|ytvos --out DIR``).

A long evaluation interrupted at sequence 29 of 30 continues where it stopped. The folder holds::

    DIR/eval-state.json          task, settings (propagation config, input size, colour, precision,
                                 overlays, ...) and the checkpoint's SHA-256
    DIR/.done/<sequence>.json    one record per finished sequence (its per-sequence scores)
    DIR/<unit>                   the sequence's outputs (e.g. DIR/<seq>/*.png, DIR/overlays/<seq>/)

A sequence is written into ``DIR/.staging-<sequence>/`` first; when it is complete its units are
moved into place (``os.replace``) and only then is its record written (atomically: temporary file +
rename). A sequence counts as finished exactly when its record exists, so an interrupt (Ctrl-C, a
kill) at any point leaves DIR consistent: finished sequences are whole, an unfinished one has no
record and is redone (its leftovers replaced) by the next run.

Rerunning with the same settings and checkpoint skips the finished sequences; other settings or
another checkpoint are an :class:`EvalFolderError` listing the differences, unless ``overwrite``
(``--overwrite``), which forgets the records and starts again. The final tables are computed from
the records of the sequences asked for, so a resumed run writes the same CSVs as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["EvalFolder", "EvalFolderError", "STATE_FILE", "file_sha256"]

STATE_FILE = "eval-state.json"
RECORDS = ".done"
STAGING = ".staging-"
FORMAT = 1


class EvalFolderError(ValueError):
    """An output folder that holds another evaluation (other settings or checkpoint) or a damaged state."""


def file_sha256(path: str | Path) -> str:
    """``sha256:<hex>`` of a file (the checkpoint an evaluation used)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def _atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to a temporary file beside ``path``, flush it to disk, rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


class EvalFolder:
    """The output folder of one evaluation (see the module docstring).

    Args:
        out: the folder (created).
        task: ``"davis"``, ``"vip"``, ``"jhmdb"``, ``"ytvos"``.
        settings: JSON-ready values that decide the outputs (propagation config, input size, ...).
        checkpoint: what identifies the model (:func:`file_sha256` of its weights, or its random-init seed).
        overwrite: forget what the folder recorded instead of refusing other settings.
    """

    @classmethod
    def fresh(cls, out: str | Path, task: str) -> "EvalFolder":
        """A folder that forgets earlier runs (the Python API and the engine's periodic validation)."""
        return cls(out, task=task, settings={}, checkpoint="", overwrite=True)

    def __init__(self, out: str | Path, *, task: str, settings: dict, checkpoint: str, overwrite: bool = False):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise EvalFolderError(f"--out {self.out} is a file, not a folder")
        self.state = {
            "format": FORMAT,
            "task": task,
            "checkpoint": checkpoint,
            "settings": json.loads(json.dumps(settings)),
        }
        state_path = self.out / STATE_FILE
        if state_path.is_file() and not overwrite:
            try:
                old = json.loads(state_path.read_text())
                if not isinstance(old, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as err:
                raise EvalFolderError(
                    f"{state_path} is damaged ({err}); pass --overwrite to start the evaluation "
                    "again in this folder, or choose another --out"
                ) from None
            diffs = _differences(
                {k: v for k, v in old.items() if k != "format"}, {k: v for k, v in self.state.items() if k != "format"}
            )
            if diffs:
                raise EvalFolderError(
                    f"{self.out} holds an evaluation with other settings or another checkpoint "
                    f"({'; '.join(diffs[:6])}{'; ...' if len(diffs) > 6 else ''}); rerun with its settings to "
                    "continue it, pass --overwrite to start again there, or choose another --out"
                )
        elif overwrite:
            _remove(self.out / RECORDS)
        self.out.mkdir(parents=True, exist_ok=True)
        for p in self.out.glob(STAGING + "*"):  # an interrupted sequence of an earlier run
            _remove(p)
        _atomic_write_json(state_path, self.state)

    def tidy(self) -> None:
        """After a failed or interrupted run: remove staging folders; a folder with no finished sequence
        is removed altogether when nothing else is in it (an early error leaves no empty output)."""
        for p in self.out.glob(STAGING + "*"):
            _remove(p)
        if not any((self.out / RECORDS).glob("*.json")):
            _remove(self.out / RECORDS)
            _remove(self.out / STATE_FILE)
            if self.out.is_dir() and not any(self.out.iterdir()):
                self.out.rmdir()

    def _record_path(self, name: str) -> Path:
        return self.out / RECORDS / f"{quote(name, safe='')}.json"

    def record(self, name: str) -> dict | None:
        """The record of a finished sequence, or None (not finished, or an unreadable record)."""
        path = self._record_path(name)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) and data.get("name") == name else None

    def finished(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if self.record(n) is not None]

    def staging(self, name: str) -> Path:
        """An empty folder to write the sequence's units into, with the layout of ``out``."""
        stage = self.out / f"{STAGING}{quote(name, safe='')}"
        _remove(stage)
        stage.mkdir(parents=True)
        return stage

    def commit(self, name: str, stage: Path, units: Sequence[str], record: dict) -> None:
        """Move the units ``stage/<unit>`` to ``out/<unit>`` (replacing what is there), then write the record."""
        for unit in units:
            src, dst = stage / unit, self.out / unit
            _remove(dst)
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
        _atomic_write_json(self._record_path(name), {"name": name, **record})
        _remove(stage)
