"""A pytest plugin: the C++ CPU backend's kernels replaced by the emulated CUDA
glue (glue.py), so the CPU suite's own tests — reference comparisons,
gradients, bad input, NaN / inf, large magnitudes, zero sizes, strided and
permuted views, determinism, fuzzing — run the CUDA backend's code path:

    PYTHONPATH=tools/cuda_emu/glue .venv/bin/python -m pytest -p as_cpu_backend tests/test_cbam.py -k cpu

The backend named "cpu" then runs the CUDA glue over the emulated kernels
(fused_attn's own dispatch, autograd and fake kernels are unchanged); the
others (reference, triton) are as they were.
"""
import torch

import glue

_lib = None


def pytest_configure(config):
    global _lib
    ops = glue.build()
    _lib = torch.library.Library("fused_attn", "IMPL")
    for name in glue.OPS:
        op = getattr(ops, name).default
        _lib.impl(name, lambda *args, _op=op: _op(*args), "CPU")


def pytest_report_header(config):
    return "as_cpu_backend: fused_attn's CPU kernels are the emulated CUDA glue (tools/cuda_emu/glue)"
