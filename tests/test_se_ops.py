"""The SE custom ops: opcheck (schema, fake kernel, autograd registration,
AOT dispatch) and torch.compile(fullgraph=True) without recompilation."""
import pytest
import torch

import fused_attn

from .utils import FORMATS, SEVariant, assert_close, reference64, se_kwargs, se_sample

pytestmark = pytest.mark.skipif(not fused_attn.HAS_C, reason="the ops are defined by the compiled extension")

OPCHECK_CASES = [
    ((2, 8, 5, 3), torch.float32, torch.contiguous_format, SEVariant()),
    ((2, 8, 5, 3), torch.float32, torch.channels_last, SEVariant(act="silu", pool="avgmax")),
    ((3, 6, 1, 1), torch.float64, torch.contiguous_format, SEVariant(effective=True, gate="hard_sigmoid")),
    ((1, 5, 4, 4), torch.bfloat16, torch.channels_last, SEVariant(bias=False, act="hard_swish")),
    ((2, 4, 3, 3), torch.float16, torch.contiguous_format, SEVariant(effective=True, pool="avgmax", bias=False)),
]


def _forward_args(case, requires_grad):
    shape, dtype, fmt, variant = case
    inputs = se_sample(shape, dtype, fmt, variant, seed=1, requires_grad=requires_grad)
    return (*inputs, variant.act, variant.gate, variant.pool)


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_opcheck_forward(case):
    torch.library.opcheck(torch.ops.fused_attn.se_forward.default, _forward_args(case, True))


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_opcheck_backward(case):
    args = _forward_args(case, False)
    x, w1, b1, w2, b2, act, gate, pool = args
    _, pooled, maxv, hidden, logits = torch.ops.fused_attn.se_forward(*args)
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.fused_attn.se_backward.default,
                          (dy, x, w1, w2, pooled, maxv, hidden, logits, act, gate, pool,
                           b1 is not None, b2 is not None))


class _Block(torch.nn.Module):
    """A conv followed by fused SE: a stand-in for a network's block."""

    def __init__(self, C):
        super().__init__()
        self.conv = torch.nn.Conv2d(C, C, 3, padding=1)
        self.se = fused_attn.nn.SqueezeExcite(C, rd_channels=C // 4, act="silu", pool="avgmax")

    def forward(self, x):
        return self.se(torch.relu(self.conv(x)))


def check_compile_fullgraph(backend, device, memory_format):
    """A block using the op compiles with fullgraph=True, does not recompile
    for new values of the same shape, and matches eager in value and gradient."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = _Block(16).to(device=device, memory_format=memory_format)
    compiled = torch.compile(block, fullgraph=True)
    with fused_attn.use_backend(backend):
        for step in range(3):
            x = torch.randn(2, 16, 9, 7, device=device).to(memory_format=memory_format).requires_grad_()
            with torch._dynamo.config.patch(error_on_recompile=step > 0):
                y = compiled(x)
            y_eager = block(x)
            assert_close(y, y_eager, torch.float32)
            params = [x] + list(block.parameters())
            dy = torch.randn_like(y)
            for g, g_eager in zip(torch.autograd.grad(y, params, dy), torch.autograd.grad(y_eager, params, dy), strict=True):
                assert_close(g, g_eager, torch.float32, grad=True)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_compile_fullgraph_no_recompile(memory_format):
    check_compile_fullgraph("cpu", "cpu", memory_format)


def test_compiled_graph_calls_the_op():
    """The compiled graph keeps fused_attn::se_forward as one node (not traced
    through, not decomposed) and matches the reference."""
    torch._dynamo.reset()
    variant = SEVariant(gate="hard_sigmoid")
    inputs = se_sample((2, 12, 5, 5), torch.float32, torch.contiguous_format, variant, seed=4)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    fn = torch.compile(lambda *a: fused_attn.squeeze_excitation(*a, **se_kwargs(variant)),
                       backend=capture, fullgraph=True)
    with fused_attn.use_backend("cpu"):
        y = fn(*inputs)
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert any("fused_attn.se_forward" in t for t in targets), targets
    y_ref, _ = reference64(*inputs, variant)
    assert_close(y, y_ref, torch.float32)


# ---- the Triton ops: opcheck and torch.compile need real GPU tensors --------
# (Under TRITON_INTERPRET=1 the Triton ops run eagerly on CPU tensors, which
# test_se.py checks across the whole matrix, but fake-tensor tracing of a
# triton_op needs a device Triton compiles for.)

def _triton_on_gpu():
    status = fused_attn.backends()["triton"]
    return "cuda" in status.devices


@pytest.mark.gpu
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_opcheck_triton_ops_on_gpu(case):
    if not _triton_on_gpu():
        pytest.skip(fused_attn.backends()["triton"].detail)
    shape, dtype, fmt, variant = case
    inputs = se_sample(shape, dtype, fmt, variant, seed=1, requires_grad=True, device="cuda")
    args = (*inputs, variant.act, variant.gate, variant.pool)
    torch.library.opcheck(torch.ops.fused_attn.se_forward_triton.default, args)
    with torch.no_grad():
        _, pooled, maxv, hidden, logits = torch.ops.fused_attn.se_forward_triton(*args)
    x, w1, b1, w2, b2 = [None if t is None else t.detach() for t in inputs]
    torch.library.opcheck(torch.ops.fused_attn.se_backward_triton.default,
                          (torch.randn_like(x), x, w1, w2, pooled, maxv, hidden, logits, variant.act, variant.gate,
                           variant.pool, b1 is not None, b2 is not None))


@pytest.mark.gpu
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_compile_fullgraph_triton_on_gpu(memory_format):
    if not _triton_on_gpu():
        pytest.skip(fused_attn.backends()["triton"].detail)
    check_compile_fullgraph("triton", "cuda", memory_format)
