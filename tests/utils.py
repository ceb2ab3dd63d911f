"""Shared inputs and tolerances for the op tests."""
import dataclasses

import pytest

import torch

import fused_attn

# Tolerances are data, per dtype. Outputs are compared with the float64
# reference evaluated on the same (rounded) inputs, so these bound the fused
# kernel's own error: fp32 accumulation plus one rounding to the output dtype.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}
# Gradients are sums over N·H·W (weights) or of two terms (dx); their atol is
# relative to the largest magnitude of the reference gradient.
GRAD_TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FORMATS = (torch.contiguous_format, torch.channels_last)

# (N, C, H, W): odd sizes, C = 1, 3, 1001, H·W = 1, 7×7, 13×17, N = 1, 5.
SHAPES = [
    (1, 1, 1, 1),
    (2, 1, 13, 17),
    (5, 3, 7, 7),
    (1, 3, 1, 9),
    (2, 1001, 1, 1),
    (1, 1001, 7, 7),
    (5, 37, 13, 17),
    (3, 64, 7, 7),
]


@dataclasses.dataclass(frozen=True)
class SEVariant:
    act: str = "relu"
    gate: str = "sigmoid"
    pool: str = "avg"
    bias: bool = True
    effective: bool = False

    def __str__(self):
        kind = "ese" if self.effective else f"se-{self.act}"
        return f"{kind}-{self.gate}-{self.pool}-{'bias' if self.bias else 'nobias'}"


VARIANTS = [
    SEVariant(),                                            # timm SEModule, torchvision, RegNetY
    SEVariant(act="silu"),                                  # EfficientNet
    SEVariant(gate="hard_sigmoid"),                         # MobileNetV3
    SEVariant(act="gelu", pool="avgmax", bias=False),
    SEVariant(act="gelu_tanh", gate="hard_sigmoid"),
    SEVariant(act="hard_swish", pool="avgmax"),
    SEVariant(effective=True, gate="hard_sigmoid"),         # timm EffectiveSEModule
    SEVariant(effective=True, pool="avgmax", bias=False),
]


def reduced(C):
    return max(1, C // 16)


def se_sample(shape, dtype, memory_format=torch.contiguous_format, variant=SEVariant(), *,
              seed=0, requires_grad=False, device="cpu"):
    """x and the SE weights, random (never zeros), logits of order one."""
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    rd = C if variant.effective else reduced(C)

    def rand(*size, scale=1.0):
        t = (torch.randn(*size, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
        return t.requires_grad_(requires_grad)

    x = rand(N, C, H, W)
    x = x.detach().to(memory_format=memory_format).requires_grad_(requires_grad)
    w1 = rand(rd, C, scale=C ** -0.5)
    b1 = rand(rd, scale=0.5) if variant.bias else None
    if variant.effective:
        w2 = b2 = None
    else:
        w2 = rand(C, rd, scale=rd ** -0.5)
        b2 = rand(C, scale=0.5) if variant.bias else None
    return x, w1, b1, w2, b2


def se_kwargs(variant):
    return dict(act=variant.act, gate=variant.gate, pool=variant.pool)


def reference64(x, w1, b1, w2, b2, variant):
    """The reference in float64 on the same inputs, with leaves requiring grad."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (x, w1, b1, w2, b2)]
    y = fused_attn.reference.squeeze_excitation(*leaves, **se_kwargs(variant))
    return y, leaves


def assert_close(actual, expected, dtype, *, grad=False):
    tol = (GRAD_TOL if grad else TOL)[dtype]
    expected = expected.to(torch.float64)
    atol = tol["atol"] * (max(1.0, expected.abs().max().item()) if grad and expected.numel() else 1.0)
    torch.testing.assert_close(actual.to(torch.float64), expected, atol=atol, rtol=tol["rtol"])


def check_se_against_reference(shape, dtype, memory_format, variant, *, device="cpu", seed=0):
    """Forward and every gradient of fused_attn.squeeze_excitation (on the
    backend in force) against the float64 reference on the same inputs."""
    inputs = se_sample(shape, dtype, memory_format, variant, seed=seed, requires_grad=True, device=device)
    y = fused_attn.squeeze_excitation(*inputs, **se_kwargs(variant))
    assert y.dtype == dtype and y.shape == inputs[0].shape and y.device == inputs[0].device
    assert y.is_contiguous(memory_format=memory_format)
    y_ref, leaves = reference64(*inputs, variant)
    assert_close(y, y_ref, dtype)

    g = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    dy = dy.to(memory_format=memory_format)
    wrt = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(y, wrt, dy)
    grads_ref = torch.autograd.grad(y_ref, [t for t in leaves if t is not None], dy.double())
    names = [n for n, t in zip(("x", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"), inputs, strict=True)
             if t is not None]
    for name, gr, g_ref, t in zip(names, grads, grads_ref, wrt, strict=True):
        assert gr.dtype == dtype and gr.shape == t.shape, name
        assert_close(gr, g_ref, dtype, grad=True)


def cpu_backends():
    """Backends that can run on CPU tensors here: the ones under test."""
    return [name for name, s in fused_attn.backends().items() if "cpu" in s.devices]


def cpu_impls():
    """cpu_backends(), with the C++ backend twice when this CPU picks its AVX2
    build: "cpu" and "cpu-baseline" (FUSED_ATTN_CPU_ISA=baseline), so both
    compiled copies are checked. The op tests' ``backend`` fixture
    (conftest.py) runs over these."""
    from fused_attn import _extension

    impls = []
    for name in cpu_backends():
        impls.append(name)
        if name == "cpu" and _extension.CPU_ISA != "baseline":
            impls.append("cpu-baseline")
    return impls


def impl_backend(name, monkeypatch):
    """The backend name to force for an entry of cpu_impls(), setting
    FUSED_ATTN_CPU_ISA for "cpu-baseline"."""
    if name == "cpu-baseline":
        monkeypatch.setenv("FUSED_ATTN_CPU_ISA", "baseline")
        return "cpu"
    return name


def ids(values):
    return [str(v) for v in values]


GPU_BACKENDS = ("cuda", "triton")


def gpu_backend_fixture(force=True):
    """A ``backend`` fixture over the GPU backends (skipping one that cannot
    run on CUDA tensors here); with ``force``, the test body runs under
    ``use_backend`` of it."""

    @pytest.fixture(params=GPU_BACKENDS)
    def backend(request):
        name = request.param
        status = fused_attn.backends()[name]
        if "cuda" not in status.devices:
            pytest.skip(status.detail)
        if force:
            with fused_attn.use_backend(name):
                yield name
        else:
            yield name

    return backend


def require_cuda_backend(single_launch=False):
    """Skips unless the CUDA backend runs here and, with single_launch, the
    device has the thread-block clusters the single launch needs."""
    status = fused_attn.backends()["cuda"]
    if "cuda" not in status.devices:
        pytest.skip(status.detail)
    if single_launch and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the single launch needs thread-block clusters (sm_90 or newer)")


def cuda_path_fixture():
    """A fixture over the CUDA backend's two SE / ECA paths, each forced with
    FUSED_ATTN_CUDA_PATH (csrc/cuda/channel_gate.h): the single launch
    ("fused", sm_90+: it raises where it has no plan, so a test of it cannot
    quietly run the other path) and the two-phase passes; the test body runs
    under use_backend("cuda")."""

    @pytest.fixture(params=["fused", "two_phase"])
    def cuda_path(request, monkeypatch):
        require_cuda_backend(single_launch=request.param == "fused")
        monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", request.param)
        with fused_attn.use_backend("cuda"):
            yield request.param

    return cuda_path


def cuda_kernels_launched(fn):
    """The names of the CUDA kernels fn() launches, from the profiler. A copy
    run first in the same profile is the sentinel: if the profiler saw no
    kernel for it (no CUPTI here), the count cannot be taken and the test is
    skipped rather than passed."""
    probe = torch.ones(1024, device="cuda")
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        probe.clone()
        torch.cuda.synchronize()
        with torch.profiler.record_function("fn"):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not kernels:
        pytest.skip("the profiler recorded no CUDA kernels (no CUPTI?): launches cannot be counted")
    # The sentinel's copy kernel comes first in time.
    kernels.sort(key=lambda e: e.time_range.start)
    return [e.name for e in kernels[1:]]


def misaligned_copy(x):
    """x copied into storage that starts one element past a 16-byte boundary,
    in x's memory format (NCHW or channels_last): the kernels' scalar paths."""
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    flat = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    shifted = flat[1:].view(x.permute(0, 2, 3, 1).shape if cl else x.shape)
    if cl:
        shifted = shifted.permute(0, 3, 1, 2)
    shifted.copy_(x)
    assert shifted.data_ptr() % 16 != 0 and shifted.is_contiguous(memory_format=torch.channels_last if cl else
                                                                  torch.contiguous_format)
    return shifted


ZERO_SIZE_SHAPES = [(0, 16, 5, 5), (2, 0, 5, 5), (2, 16, 0, 5), (2, 16, 5, 0)]


def check_zero_size(shape, device):
    """Every op and variant on an x with a zero-size dimension (under the
    backend in force) returns an empty output of x's shape, and its backward
    gradients of the right shapes, without raising. (The reference cannot be
    the oracle here: like eager PyTorch, its amax of nothing raises.)"""
    g = torch.Generator().manual_seed(0)
    C = shape[1]
    rd = max(1, C // 4)

    def leaf(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device).requires_grad_()

    x = leaf(*shape)
    w1, w2, wc, ws = leaf(rd, C), leaf(C, rd), leaf(5), leaf(1, 2, 3, 3, scale=0.2)
    bnw, bnb = torch.tensor([0.9], device=device), torch.tensor([0.1], device=device)
    stats = dict(bn_running_mean=torch.tensor([0.1], device=device), bn_running_var=torch.tensor([1.2], device=device))
    cases = {
        "se avgmax": (lambda: fused_attn.squeeze_excitation(x, w1, None, w2, None, pool="avgmax"), [w1, w2]),
        "eca zeros": (lambda: fused_attn.efficient_channel_attention(x, wc), [wc]),
        "eca circular": (lambda: fused_attn.efficient_channel_attention(x, wc, padding="circular"), [wc]),
        "cbam eval": (lambda: fused_attn.cbam(x, w1, None, w2, None, ws, bn_weight=bnw, bn_bias=bnb, **stats), [w1, w2, ws]),
        "cbam train": (lambda: fused_attn.cbam(x, w1, None, w2, None, ws, bn_weight=bnw, bn_bias=bnb, bn_training=True),
                       [w1, w2, ws]),
    }
    for name, (run, weights) in cases.items():
        y = run()
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, name
        grads = torch.autograd.grad(y.sum(), [x, *weights])
        for t, gr in zip([x, *weights], grads, strict=True):
            assert gr.shape == t.shape, name
