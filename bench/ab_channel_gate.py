"""One timing for an A/B of two builds of the CPU kernels: SE (pool avg and
avgmax) and ECA ops at the ResNet-50 7×7 and 14×14 sites, N=8, float32, both
layouts; per op the fastest of 7 rounds of 100 calls, printed in ms.

    PYTHONPATH=<dir holding a fused_attn package with its _C> python bench/ab_channel_gate.py

Run the two builds in alternating processes (this VM's speed drifts).
"""
import sys
import time

import torch

import fused_attn


def best_ms(fn, calls=100, rounds=7):
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e3


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    ops = torch.ops.fused_attn
    print(f"# {fused_attn.__file__}", file=sys.stderr)
    print("site        layout  se_fwd_avg  se_fwd_avgmax  se_bwd_avgmax  eca_fwd  eca_bwd")
    for C, H, k in [(2048, 7, 7), (1024, 14, 5)]:
        for cl in (False, True):
            x = torch.randn(8, C, H, H)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            dy = torch.randn_like(x)
            w1, w2, w = torch.randn(C // 16, C) * 0.05, torch.randn(C, C // 16) * 0.05, torch.randn(k)
            with torch.no_grad():
                se_avg = best_ms(lambda: ops.se_forward(x, w1, None, w2, None, "relu", "sigmoid", "avg"))
                se_max = best_ms(lambda: ops.se_forward(x, w1, None, w2, None, "relu", "sigmoid", "avgmax"))
                _, p, m, h, z = ops.se_forward(x, w1, None, w2, None, "relu", "sigmoid", "avgmax")
                se_bwd = best_ms(lambda: ops.se_backward(dy, x, w1, w2, p, m, h, z, "relu", "sigmoid", "avgmax",
                                                         False, False))
                eca = best_ms(lambda: ops.eca_forward(x, w, None, "zeros", "sigmoid"))
                _, p, z = ops.eca_forward(x, w, None, "zeros", "sigmoid")
                eca_bwd = best_ms(lambda: ops.eca_backward(dy, x, w, p, z, "zeros", "sigmoid", False))
            site = f"{C}x{H}x{H}"
            print(f"{site:<11} {'cl' if cl else 'nchw':<6} {se_avg:10.3f} {se_max:14.3f} {se_bwd:14.3f} "
                  f"{eca:8.3f} {eca_bwd:8.3f}", flush=True)


if __name__ == "__main__":
    main()
