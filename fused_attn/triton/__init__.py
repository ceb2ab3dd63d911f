"""Triton kernels: the GPU fallback when the CUDA extension is not built, and
what runs on non-NVIDIA GPUs Triton supports. Under ``TRITON_INTERPRET=1``
they also run on CPU tensors (slowly): that is how CI tests them.

``AVAILABLE`` says whether the kernels could be loaded, ``ERROR`` why not.
"""
import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

try:
    from . import cbam, eca, se  # noqa: F401  (register fused_attn::{se,eca,cbam}_{forward,backward}_triton)
except Exception as exc:  # not installed, too old for this torch, or broken: never fatal
    AVAILABLE = False
    ERROR = f"the Triton kernels could not be loaded ({type(exc).__name__}: {exc})"
else:
    AVAILABLE = True
    ERROR = ""
