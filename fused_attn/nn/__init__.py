"""Drop-in modules with the parameter names of the modules they replace."""
from .se import SqueezeExcite

__all__ = ["SqueezeExcite"]
