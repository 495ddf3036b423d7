"""The library's config classes that a file may name, by registry name (the built-in table of
:mod:`tritoncorr.engine.registry`).

The table lives here, above the engine and the methods: the methods import the engine (its config
helpers, checkpoints, the method contract), so the engine must not import them. ``tritoncorr/__init__.py``
gives :func:`builtin_configs` to :func:`tritoncorr.engine.registry.set_builtin_configs`; the classes are
imported on the registry's first lookup.
"""

from __future__ import annotations


def builtin_configs() -> dict[str, type]:
    """``{registry name: config class}`` of every method, data and converted-checkpoint config of the library."""
    from tritoncorr.data.config import DataConfig
    from tritoncorr.data.images import ImageDataConfig
    from tritoncorr.methods.dul import DULConfig
    from tritoncorr.methods.liir import LIIRConfig
    from tritoncorr.methods.moco import MoCoConfig
    from tritoncorr.methods.stt import STTConfig, STTDataConfig
    from tritoncorr.models.convert import ConvertedConfig

    return {
        "dul": DULConfig,
        "stt": STTConfig,
        "liir": LIIRConfig,
        "moco": MoCoConfig,
        "converted": ConvertedConfig,
        "data": DataConfig,
        "stt_data": STTDataConfig,
        "image_data": ImageDataConfig,
    }
