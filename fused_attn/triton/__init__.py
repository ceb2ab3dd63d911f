"""Triton kernels (the GPU fallback when the CUDA extension is not built).

Empty for now: the SE Triton kernels are issue 3. ``fused_attn.backends()``
reports the Triton backend as unavailable until they land.
"""
