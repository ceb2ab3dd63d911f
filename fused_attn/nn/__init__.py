"""Drop-in modules with the parameter names of the modules they replace."""
from .eca import EfficientChannelAttention
from .se import SqueezeExcite

__all__ = ["EfficientChannelAttention", "SqueezeExcite"]
