"""One timing for an A/B of two builds: the fastest of 15 forward+backward steps of
fused_attn.cbam (N=8, float32, eval BatchNorm) at one site, printed in ms.

    PYTHONPATH=<build> python bench/ab_cbam_step.py C H rd nchw|cl
"""
import sys, time, torch, fused_attn
torch.set_num_threads(2)
C, H, rd, cl = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "cl"
fmt = torch.channels_last if cl else torch.contiguous_format
x = torch.randn(8, C, H, H).to(memory_format=fmt).requires_grad_()
w1 = (torch.randn(rd, C) * 0.1).requires_grad_(); w2 = (torch.randn(C, rd) * 0.1).requires_grad_(); ws = (torch.randn(1, 2, 7, 7) * 0.1).requires_grad_()
rm, rv = torch.zeros(1), torch.ones(1); bw, bb = torch.ones(1, requires_grad=True), torch.zeros(1, requires_grad=True)
dy = torch.randn_like(x)
def step():
    y = fused_attn.cbam(x, w1, None, w2, None, ws, bn_weight=bw, bn_bias=bb, bn_running_mean=rm, bn_running_var=rv)
    torch.autograd.grad(y, [x, w1, w2, ws, bw, bb], dy)
for _ in range(3): step()
ts = []
for _ in range(15):
    t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
print(f"{min(ts)*1e3:.2f}")
