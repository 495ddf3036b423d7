"""tritoncorr: self-supervised dense video correspondence with fused Triton kernels.

Import is cheap: heavy modules (torch models, kernels) are imported where they are used.
"""

__version__ = "0.1.0"
