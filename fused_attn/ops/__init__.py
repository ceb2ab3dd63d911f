"""fused_attn's custom operators: argument checks, fake kernels and autograd
for the schemas defined in csrc/fused_attn.cpp."""
from . import cbam, eca, se

__all__ = ["cbam", "eca", "se"]
