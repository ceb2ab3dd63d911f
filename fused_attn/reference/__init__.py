"""Plain eager PyTorch versions of every fused op: the oracle for the tests and
benchmarks, and the backend of last resort. Written for clarity, not speed."""
from .se import ACTIVATIONS, GATES, POOLS, squeeze_excitation

__all__ = ["ACTIVATIONS", "GATES", "POOLS", "squeeze_excitation"]
