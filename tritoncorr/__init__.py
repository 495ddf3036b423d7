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
