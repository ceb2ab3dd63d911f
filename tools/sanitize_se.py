"""Small SE, ECA and CBAM forwards + backwards on CUDA tensors over every variant, dtype and
layout, for compute-sanitizer (bench/gpu_check.sh runs it under memcheck and
racecheck); SE and ECA run on both CUDA paths, the single launch and the two-phase
passes. Shapes are small — the sanitizer is slow — but cover both the
16-byte and the scalar paths, tails, and several blocks per sample.

    compute-sanitizer --tool memcheck --error-exitcode 1 python tools/sanitize_se.py [backend]
"""
import os
import sys

import torch

# The repository's fused_attn, also when it was built in place rather than
# installed (python puts tools/, not the root, on the path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fused_attn  # noqa: E402

SHAPES = [(2, 3, 5, 7), (2, 40, 8, 8), (1, 264, 4, 4)]
# CBAM adds few long rows: its reductions' eight-warps-per-row and split paths.
CBAM_SHAPES = [(1, 2048, 3, 3)]
VARIANTS = [dict(act="relu", gate="sigmoid", pool="avg", bias=True, effective=False),
            dict(act="silu", gate="hard_sigmoid", pool="avgmax", bias=False, effective=False),
            dict(act="relu", gate="sigmoid", pool="avgmax", bias=True, effective=True)]


def cuda_paths(backend):
    """The SE / ECA CUDA paths to run (FUSED_ATTN_CUDA_PATH): the single
    launch (sm_90+) and the two-phase passes; other backends have one."""
    if backend != "cuda":
        return [None]
    return (["fused"] if torch.cuda.get_device_capability()[0] >= 9 else []) + ["two_phase"]


def main(backend="cuda"):
    torch.manual_seed(0)
    checked = 0
    with fused_attn.use_backend(backend):
        for path in cuda_paths(backend):
            if path is not None:
                os.environ["FUSED_ATTN_CUDA_PATH"] = path
            checked += run_se(path) + run_eca()
        os.environ.pop("FUSED_ATTN_CUDA_PATH", None)
        checked += run_cbam()
    print(f"sanitize_se: {checked} forward+backward runs (SE and ECA on paths {cuda_paths(backend)}, CBAM) "
          f"on backend {backend!r}")


def run_se(path):
    """Every SE variant, dtype and layout (float64 has no single launch)."""
    checked = 0
    dtypes = [torch.float32, torch.float16, torch.bfloat16] + ([] if path == "fused" else [torch.float64])
    for shape in SHAPES:
        N, C, H, W = shape
        for v in VARIANTS:
            rd = C if v["effective"] else max(1, C // 4)
            for dtype in dtypes:
                for fmt in (torch.contiguous_format, torch.channels_last):
                    x = torch.randn(shape, device="cuda", dtype=dtype).to(memory_format=fmt).requires_grad_()
                    w1 = torch.randn(rd, C, device="cuda", dtype=dtype, requires_grad=True)
                    b1 = torch.randn(rd, device="cuda", dtype=dtype, requires_grad=True) if v["bias"] else None
                    w2 = None if v["effective"] else torch.randn(C, rd, device="cuda", dtype=dtype,
                                                                 requires_grad=True)
                    y = fused_attn.squeeze_excitation(x, w1, b1, w2, None, act=v["act"], gate=v["gate"],
                                                      pool=v["pool"])
                    y.backward(torch.randn_like(y))
                    checked += 1
    torch.cuda.synchronize()
    return checked


def run_eca():
    checked = 0
    for shape in SHAPES:
        for padding, k in (("zeros", 3), ("circular", 9)):
            for dtype in (torch.float32, torch.bfloat16):
                for fmt in (torch.contiguous_format, torch.channels_last):
                    x = torch.randn(shape, device="cuda", dtype=dtype).to(memory_format=fmt).requires_grad_()
                    w = torch.randn(k, device="cuda", dtype=dtype, requires_grad=True)
                    b = torch.randn(1, device="cuda", dtype=dtype, requires_grad=True) if k == 9 else None
                    y = fused_attn.efficient_channel_attention(x, w, b, padding=padding)
                    y.backward(torch.randn_like(y))
                    checked += 1
    torch.cuda.synchronize()
    return checked


def run_cbam():
    checked = 0
    for shape in SHAPES + CBAM_SHAPES:
        N, C, H, W = shape
        for light, train in ((False, False), (False, True), (True, True)):
            for dtype in (torch.float32, torch.bfloat16):
                for fmt in (torch.contiguous_format, torch.channels_last):
                    x = torch.randn(shape, device="cuda", dtype=dtype).to(memory_format=fmt).requires_grad_()
                    rd = max(1, C // 4)
                    w1 = torch.randn(rd, C, device="cuda", dtype=dtype, requires_grad=True)
                    w2 = torch.randn(C, rd, device="cuda", dtype=dtype, requires_grad=True)
                    ws = torch.randn(1, 1 if light else 2, 7, 7, device="cuda", dtype=dtype,
                                     requires_grad=True)
                    rm, rv = torch.zeros(1, device="cuda"), torch.ones(1, device="cuda")
                    y = fused_attn.cbam(x, w1, None, w2, None, ws, bn_weight=torch.ones(1, device="cuda"),
                                        bn_bias=torch.zeros(1, device="cuda"), bn_running_mean=rm,
                                        bn_running_var=rv, bn_training=train, light=light)
                    y.backward(torch.randn_like(y))
                    checked += 1
    torch.cuda.synchronize()
    return checked


if __name__ == "__main__":
    main(*sys.argv[1:])
