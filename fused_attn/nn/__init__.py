"""Drop-in modules with the parameter names of the modules they replace."""
from .cbam import CBAM, LightCBAM
from .eca import EfficientChannelAttention
from .se import SqueezeExcite

__all__ = ["CBAM", "EfficientChannelAttention", "LightCBAM", "SqueezeExcite"]
