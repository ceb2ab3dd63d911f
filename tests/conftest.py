import os

# Every compiled kernel fills its freshly allocated outputs with NaN before
# writing them (csrc/se_excite.cpp: maybe_poison), so an element a kernel
# forgets to write fails the comparison instead of passing by luck.
os.environ.setdefault("FUSED_ATTN_DEBUG_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
