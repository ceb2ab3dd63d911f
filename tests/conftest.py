import os

# Every compiled kernel fills its freshly allocated outputs with NaN before
# writing them (csrc/se_common.cpp: maybe_poison; fused_attn/triton/se.py), so an element a kernel
# forgets to write fails the comparison instead of passing by luck.
os.environ.setdefault("FUSED_ATTN_DEBUG_POISON", "1")

# Without a GPU, the Triton kernels run on CPU tensors in Triton's interpreter
# (it must be set before triton is imported), so the whole CPU matrix covers
# them too. With a GPU they run compiled, on CUDA tensors.
import torch  # noqa: E402  (does not import triton)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The interpreter without its no-op re-patching of triton.language at every
# helper call (tests/triton_interpreter.py: a fifth to a third of its time
# on the converted models);
# FUSED_ATTN_PLAIN_INTERPRETER=1 runs Triton's interpreter as it ships.
if os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("FUSED_ATTN_PLAIN_INTERPRETER") != "1":
    from .triton_interpreter import skip_nested_patching

    skip_nested_patching()   # (does nothing where Triton is missing or its interpreter differs)

import collections  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402

# Two intra-op threads (the kernels' parallel paths), but no more threads in
# all than cores: on pytest-xdist workers, the cores shared out among them
# (oversubscribed, the suite ran 1.2× slower on two workers than on one).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _workers)))

# FUSED_ATTN_SUBSET=K keeps one in K of the cases of every test function with
# more than MATRIX cases (the dtype × layout × shape × variant matrices), drawn
# by a hash of the test's id, so the same ones every run and all of the
# smaller tests: a first pass over everything when time is short (a GPU lease).
MATRIX = 100


def _subset(config, items):
    k = int(os.environ.get("FUSED_ATTN_SUBSET", "1"))
    if k <= 1:
        return items
    per_function = collections.Counter(item.nodeid.split("[")[0] for item in items)
    keep, drop = [], []
    for item in items:
        big = per_function[item.nodeid.split("[")[0]] > MATRIX
        (drop if big and zlib.crc32(item.nodeid.encode()) % k else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    return keep


# FUSED_ATTN_STOP_AT=<unix time>: a test not started by then is skipped (and
# says so), so a run with a hard time limit (bench/gpu_check.sh on a lease)
# still ends with its summary instead of being killed mid-test.
_STOP_AT = float(os.environ.get("FUSED_ATTN_STOP_AT") or 0)


def pytest_runtest_setup(item):
    if _STOP_AT and time.time() > _STOP_AT:
        pytest.skip("not started: past FUSED_ATTN_STOP_AT, the run's time limit")


def pytest_collection_modifyitems(config, items):
    items[:] = _subset(config, items)
    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = (None if os.environ.get("FUSED_ATTN_SLOW_TESTS") == "1"
                 else pytest.mark.skip(reason="slow: set FUSED_ATTN_SLOW_TESTS=1"))
    for item in items:
        if skip_gpu and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_slow and "slow" in item.keywords:
            item.add_marker(skip_slow)


def _cpu_impls():
    from .utils import cpu_impls

    return cpu_impls()


@pytest.fixture(params=_cpu_impls())
def backend(request, monkeypatch):
    """Every backend that runs on CPU tensors here, the C++ one twice (its
    AVX2 build and, forced, its baseline build). Test modules that run other
    backends (the GPU tests) define their own ``backend``."""
    import fused_attn

    from .utils import impl_backend

    name = impl_backend(request.param, monkeypatch)
    with fused_attn.use_backend(name):
        yield name
