"""fused_attn's custom operators: argument checks and fake kernels for the
schemas defined in csrc/fused_attn.cpp (whose autograd is csrc/autograd.cpp),
and the autograd of the Triton ops."""
from . import cbam, eca, graph_backward, se

__all__ = ["cbam", "eca", "graph_backward", "se"]
