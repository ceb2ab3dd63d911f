"""One timing for an A/B of two builds: the fastest of REPS calls of a fused
op (from_module of the timm module, C++ CPU backend, N=8 or $N, eval) at one site,
forward (no_grad) or forward+backward (dx and every weight gradient), printed
in ms. Run it under each build's PYTHONPATH in alternation (the VM's speed
drifts from minute to minute: compare like rounds).

    PYTHONPATH=<build> python bench/ab_step.py se|eca|cbam C H nchw|cl float32|bfloat16|float16 fwd|fwdbwd
"""
import os
import sys
import time

import torch

import fused_attn
from timm.layers import EcaModule, SEModule
from timm.layers.cbam import CbamModule

torch.set_num_threads(2)
op, C, H, layout, dtype, direction = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7]
dtype = getattr(torch, dtype)
fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
module = {"se": lambda: SEModule(C, rd_channels=C // 16), "eca": lambda: EcaModule(C),
          "cbam": lambda: CbamModule(C, rd_ratio=1 / 16)}[op]()
torch.manual_seed(0)
fused = fused_attn.convert(torch.nn.Sequential(module.eval()))[0].to(dtype)
x = torch.randn(int(os.environ.get("N", 8)), C, H, H).to(dtype).to(memory_format=fmt)
dy = torch.randn_like(x)
params = list(fused.parameters())


def step():
    if direction == "fwd":
        with torch.no_grad():
            fused(x)
    else:
        xg = x.detach().requires_grad_()
        torch.autograd.grad(fused(xg), [xg] + params, dy)


with fused_attn.use_backend("cpu"):
    for _ in range(3):
        step()
    ts = []
    for _ in range(int(os.environ.get("REPS", 15))):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
print(f"{min(ts) * 1e3:.3f}")
