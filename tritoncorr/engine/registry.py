"""The fixed registry of config classes that a file may name.

Files written by tritoncorr (a run's ``config.json``, the ``tritoncorr.method_config`` metadata of
every ``model.safetensors`` / ``init.safetensors``, converted checkpoints) record which config class
they were made with, so that the method can be rebuilt. Such a file may come from anyone, so the
name it records never reaches an import: it is looked up in this table, which holds only classes
that code has put there:

=============== =================================================
name            class
=============== =================================================
``dul``         :class:`tritoncorr.methods.dul.DULConfig`
``stt``         :class:`tritoncorr.methods.stt.STTConfig`
``liir``        :class:`tritoncorr.methods.liir.LIIRConfig`
``moco``        :class:`tritoncorr.methods.moco.MoCoConfig`
``converted``   :class:`tritoncorr.models.convert.ConvertedConfig`
``data``        :class:`tritoncorr.data.config.DataConfig`
``stt_data``    :class:`tritoncorr.methods.stt.STTDataConfig`
``image_data``  :class:`tritoncorr.data.images.ImageDataConfig`
=============== =================================================

Files record the registry name (``"__class__": "dul"``). Files written before the registry
recorded ``"module:QualName"`` (e.g. ``"tritoncorr.methods.dul:DULConfig"``); such a path is
accepted only when it is exactly the path of a registered class, and is then mapped onto it. Any
other name is a :class:`~tritoncorr.engine.config.ConfigError` naming the file; nothing is imported
and nothing is constructed.

A recipe that trains a method of its own (a config class outside the library) calls
:func:`register_config` when it is loaded; the recipe is code the user chose to run, the file is not.

The library's own classes (the table above) are listed in :mod:`tritoncorr.builtin_configs`, above the
engine and the methods: the methods import the engine, so the engine must not import them. The
``tritoncorr`` package hands that list to :func:`set_builtin_configs` when it is imported; it is
called (and the classes imported) on the first lookup.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable

__all__ = ["register_config", "config_class", "config_name", "registered_names", "class_path", "set_builtin_configs"]

_EXTRA: dict[str, type] = {}
_BUILTIN: dict[str, type] | None = None
_BUILTIN_SOURCE: Callable[[], dict[str, type]] = dict
_LOCK = threading.Lock()


def set_builtin_configs(source: Callable[[], dict[str, type]]) -> None:
    """Where the library's own config classes come from: ``source()`` -> ``{name: class}``, called once,
    on the first lookup (``tritoncorr/__init__.py`` gives :func:`tritoncorr.builtin_configs.builtin_configs`)."""
    global _BUILTIN, _BUILTIN_SOURCE
    with _LOCK:
        _BUILTIN_SOURCE, _BUILTIN = source, None


def _builtin() -> dict[str, type]:
    """The library's own config classes (from the source given to :func:`set_builtin_configs`, on first use)."""
    global _BUILTIN
    with _LOCK:
        if _BUILTIN is None:
            _BUILTIN = dict(_BUILTIN_SOURCE())
    return _BUILTIN


def _table() -> dict[str, type]:
    return {**_builtin(), **_EXTRA}


def class_path(cls: type) -> str:
    """``"module:QualName"`` of ``cls`` (the form files recorded before the registry)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register_config(name: str, cls: type) -> type:
    """Allow files to name ``cls`` as ``name`` (for a recipe's own method or data config).

    Registering the same class twice under one name is a no-op; a name of the library or one already
    taken by another class is a ``ValueError``. Returns ``cls`` (usable as a decorator argument).
    """
    if not name or not isinstance(name, str) or ":" in name:
        raise ValueError(f"config registry name must be a non-empty string without ':', got {name!r}")
    if not isinstance(cls, type):
        raise ValueError(f"register_config({name!r}, ...) needs a class, got {type(cls).__name__}")
    taken = _table().get(name)
    if taken is not None and taken is not cls:
        raise ValueError(f"config registry name {name!r} is already taken by {class_path(taken)}")
    _EXTRA[name] = cls
    return cls


def registered_names() -> list[str]:
    return sorted(_table())


def config_name(cls: type) -> str | None:
    """The registry name of ``cls``, or None when it is not registered."""
    for name, c in _table().items():
        if c is cls:
            return name
    return None


def config_class(ref: object, where: str) -> type:
    """The registered class that ``ref`` (a name read from a file) selects.

    ``ref``: a registry name, or the ``"module:QualName"`` of a registered class (older files).
    ``where``: the file and field it was read from, for the message.

    Raises:
        ConfigError: ``ref`` is not a string or selects no registered class.
    """
    from tritoncorr.engine.config import ConfigError

    table = _table()
    if isinstance(ref, str):
        if ref in table:
            return table[ref]
        for cls in table.values():
            if class_path(cls) == ref:
                return cls
    shown = ref if isinstance(ref, str) else type(ref).__name__
    close = difflib.get_close_matches(str(ref), list(table), n=1, cutoff=0.6) if isinstance(ref, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"{where}: unknown config class {str(shown)[:200]!r}{hint} (tritoncorr builds only its own "
        f"configs: {', '.join(sorted(table))}; a recipe's own config must be registered with "
        f"tritoncorr.engine.registry.register_config). Nothing was imported."
    )
