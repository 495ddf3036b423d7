"""tritoncorr: self-supervised dense video correspondence with fused Triton kernels.

Import is cheap: heavy modules (torch models, kernels) are imported where they are used;
``tritoncorr.VideoPredictor`` is imported on first access.
"""

__version__ = "0.1.0"

__all__ = ["VideoPredictor", "__version__"]


def __getattr__(name: str):
    if name == "VideoPredictor":
        from tritoncorr.predictor import VideoPredictor

        return VideoPredictor
    raise AttributeError(f"module 'tritoncorr' has no attribute {name!r}")


def _register_builtin_configs() -> None:
    """Give the engine's config registry the library's config classes (imported on its first lookup):
    the table is above the engine, which must not import the methods (:mod:`tritoncorr.builtin_configs`)."""
    from tritoncorr.builtin_configs import builtin_configs
    from tritoncorr.engine.registry import set_builtin_configs

    set_builtin_configs(builtin_configs)


_register_builtin_configs()
