"""Plain eager PyTorch versions of every fused op: the oracle for the tests and
benchmarks, and the backend of last resort. Written for clarity, not speed."""
from .cbam import POOL_ORDERS, cbam
from .eca import PADDINGS, eca_kernel_size, efficient_channel_attention
from .se import ACTIVATIONS, GATES, POOLS, squeeze_excitation

__all__ = ["ACTIVATIONS", "GATES", "PADDINGS", "POOLS", "POOL_ORDERS", "cbam", "eca_kernel_size",
           "efficient_channel_attention", "squeeze_excitation"]
