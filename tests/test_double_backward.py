"""Second derivatives through the fused ops (backward with create_graph=True:
gradient penalties, Hessian-vector products). The fused backward ops return
plain tensors, so such a backward takes the reference's gradient as a graph
(fused_attn/ops/graph_backward.py); without that, the second derivative came
out as zero with only a warning."""
import copy

import pytest
import torch
from torch import nn

import fused_attn

from .utils import assert_close

F64 = torch.float64


def _rand(*shape, scale=1.0):
    return (torch.randn(*shape, dtype=F64) * scale).requires_grad_()


def _se_case(variant):
    C, rd = 6, 3
    x = _rand(2, C, 3, 4)
    if variant == "effective":
        return (x, _rand(C, C, scale=0.5), _rand(C)), dict(gate="sigmoid"), fused_attn.squeeze_excitation
    act, pool = {"silu_avg": ("silu", "avg"), "gelu_avgmax": ("gelu", "avgmax")}[variant]
    args = (x, _rand(rd, C, scale=0.5), _rand(rd), _rand(C, rd, scale=0.5), _rand(C))
    return args, dict(act=act, pool=pool), fused_attn.squeeze_excitation


def _eca_case(padding):
    args = (_rand(2, 7, 3, 3), _rand(3, scale=0.5), _rand(1) if padding == "circular" else None)
    return args, dict(padding=padding), fused_attn.efficient_channel_attention


def _cbam_case(variant):
    C, rd = 8, 2
    light = variant == "light"
    maps = 1 if light else 2
    x = _rand(2, C, 4, 3)
    w = (_rand(rd, C, scale=0.5), _rand(rd), _rand(C, rd, scale=0.5), _rand(C), _rand(1, maps, 3, 3, scale=0.3))
    kw = dict(light=light, bn_weight=_rand(1), bn_bias=_rand(1), bn_eps=1e-3, act="silu")
    if variant == "eval":
        kw.update(bn_running_mean=torch.tensor([0.1], dtype=F64), bn_running_var=torch.tensor([1.3], dtype=F64))
    if variant == "max_first":
        kw.update(pool_order="max_mean")
    return (x, *w), kw, fused_attn.cbam


CASES = {
    **{f"se-{v}": (lambda v=v: _se_case(v)) for v in ("silu_avg", "gelu_avgmax", "effective")},
    **{f"eca-{p}": (lambda p=p: _eca_case(p)) for p in ("zeros", "circular")},
    **{f"cbam-{v}": (lambda v=v: _cbam_case(v)) for v in ("batch_stats", "eval", "light", "max_first")},
}


def _bind(args, kw, op):
    """(the tensors among args, fn(*those tensors) calling op with args' Nones
    and kw)."""
    inputs = [a for a in args if a is not None]

    def fn(*tensors):
        it = iter(tensors)
        return op(*[None if a is None else next(it) for a in args], **kw)

    return inputs, fn


def _second_derivative(fn, inputs, dy, v):
    """d/d(inputs, dy) of <grad(fn)(inputs)·dy, v>: one Hessian-vector product."""
    grads = torch.autograd.grad(fn(*inputs), inputs, dy, create_graph=True)
    return torch.autograd.grad(sum((g * w).sum() for g, w in zip(grads, v, strict=True)), [*inputs, dy])


def _check_graph_gradient(fn, inputs, dy):
    """The create_graph gradient is a graph, and equals the fused backward's."""
    plain = torch.autograd.grad(fn(*inputs), inputs, dy)
    graph = torch.autograd.grad(fn(*inputs), inputs, dy, create_graph=True)
    assert all(g.requires_grad for g in graph)
    for g, p in zip(graph, plain, strict=True):
        assert_close(g.detach(), p, F64, grad=True)


def _check_hvp_against_reference(fn, inputs, dy):
    """A Hessian-vector product on the backend in force, nonzero and equal to
    the reference backend's."""
    v = [torch.randn_like(t) for t in inputs]
    got = _second_derivative(fn, inputs, dy, v)
    with fused_attn.use_backend("reference"):
        want = _second_derivative(fn, inputs, dy, v)
    for g, w in zip(got, want, strict=True):
        assert g.abs().max() > 0
        assert_close(g, w, F64, grad=True)


@pytest.mark.parametrize("case", list(CASES))
def test_gradgradcheck(backend, case):
    """Second derivatives of every op against finite differences of its
    gradient (float64), and that gradient, taken with create_graph=True, equal
    to the fused backward's. Under the Triton interpreter, whose every forward
    takes seconds here, one Hessian-vector product against the reference
    backend's (which the finite differences check) instead."""
    torch.manual_seed(0)
    args, kw, op = CASES[case]()
    inputs, fn = _bind(args, kw, op)
    dy = torch.randn_like(args[0]).requires_grad_()
    _check_graph_gradient(fn, inputs, dy)
    if backend != "triton":
        assert torch.autograd.gradgradcheck(fn, inputs, (dy,), atol=1e-6, rtol=1e-5)
    else:
        _check_hvp_against_reference(fn, inputs, dy)


def test_gradient_penalty_on_a_converted_model(backend):
    """The use that needs it: a WGAN-GP-style penalty on the input gradient
    of a small network with SE, ECA and CBAM blocks, converted against
    unconverted: the same parameter gradients (and nonzero ones through the
    attention blocks' weights)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), timm.layers.SEModule(16, rd_channels=4, act_layer=nn.SiLU),
        nn.Conv2d(16, 16, 3, padding=1), timm.layers.EcaModule(16), timm.layers.cbam.CbamModule(16, rd_ratio=1 / 4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1)).train()
    fused, report = fused_attn.convert(copy.deepcopy(model))
    assert report.total == 3

    def penalty_grads(m):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
        g, = torch.autograd.grad(m(x).sum(), x, create_graph=True)
        loss = (g.flatten(1).norm(dim=1) - 1).square().mean()
        # (the last bias does not reach the input gradient)
        return torch.autograd.grad(loss, list(m.parameters()), allow_unused=True, materialize_grads=True)

    want, got = penalty_grads(model), penalty_grads(fused)
    names = [n for n, _ in model.named_parameters()]
    for name, g, w in zip(names, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=name)
    fc1 = names.index("2.fc1.weight")
    assert got[fc1].abs().max() > 1e-6   # the penalty reaches the SE weights


def test_cbam_eval_normalizes_as_its_forward_did(backend):
    """An eval forward, then a training forward that updates the same running
    statistics in place, then the first one's create_graph backward: it uses
    the statistics the forward normalized with, as the plain backward does."""
    torch.manual_seed(0)
    args, kw, op = _cbam_case("eval")
    inputs = [a for a in args if a is not None]
    y = op(*args, **kw)
    dy = torch.randn_like(y)
    plain = torch.autograd.grad(y, inputs, dy, retain_graph=True)
    with torch.no_grad():
        op(*args, **dict(kw, bn_training=True))
    assert not torch.equal(kw["bn_running_mean"], torch.tensor([0.1], dtype=F64))   # updated in place
    graph = torch.autograd.grad(y, inputs, dy, create_graph=True)
    for g, p in zip(graph, plain, strict=True):
        assert_close(g.detach(), p, F64, grad=True)


@pytest.mark.parametrize("frozen", ["x", "weights"])
@pytest.mark.parametrize("case", ["se-gelu_avgmax", "eca-circular", "cbam-eval", "cbam-batch_stats"])
def test_frozen_input_or_weights(backend, case, frozen):
    """A Hessian-vector product where x does not require grad (only the
    weights do), or the weights do not (only x), against the reference
    backend's."""
    torch.manual_seed(0)
    args, kw, op = CASES[case]()
    tensors = [a for a in args if a is not None]
    live = tensors[1:] if frozen == "x" else tensors[:1]
    for t in tensors:
        t.requires_grad_(any(t is u for u in live))
    dy = torch.randn_like(args[0])
    v = [torch.randn_like(t) for t in live]

    def hvp():
        grads = torch.autograd.grad(op(*args, **kw), live, dy, create_graph=True)
        return torch.autograd.grad(sum((g * w).sum() for g, w in zip(grads, v, strict=True)), live)

    got = hvp()
    with fused_attn.use_backend("reference"):
        want = hvp()
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, F64, grad=True)


@pytest.mark.parametrize("case", ["se-gelu_avgmax", "eca-zeros", "cbam-batch_stats", "cbam-eval"])
@pytest.mark.parametrize("shape", [(0, 8, 4, 3), (2, 8, 0, 3)], ids=["N0", "HW0"])
def test_zero_size_create_graph(backend, case, shape):
    """Empty x: the create_graph backward gives what the plain one gives
    (gradients of the right shapes, zero or NaN as the fused backward has
    them), not the reference's amax refusing an empty H·W (as eager timm's
    does: the reference backend is left out)."""
    if backend == "reference":
        pytest.skip("eager PyTorch, as timm's modules: amax refuses an empty H·W")
    torch.manual_seed(0)
    args, kw, op = CASES[case]()
    x = torch.randn(shape[0], args[0].shape[1], *shape[2:], dtype=F64, requires_grad=True)
    args = (x, *args[1:])
    inputs = [a for a in args if a is not None]
    y = op(*args, **kw)
    plain = torch.autograd.grad(y, inputs, torch.ones_like(y), retain_graph=True, allow_unused=True)
    graph = torch.autograd.grad(y, inputs, torch.ones_like(y), create_graph=True, allow_unused=True)
    for g, p, t in zip(graph, plain, inputs, strict=True):
        assert g is not None and g.shape == t.shape
        torch.testing.assert_close(g, torch.zeros_like(t) if p is None else p, equal_nan=True)


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", list(CASES))
def test_second_derivative_on_gpu(gpu_backend, case):
    """The same on CUDA tensors: the create_graph gradient equal to the fused
    one, and a Hessian-vector product against the reference backend's."""
    status = fused_attn.backends()[gpu_backend]
    if "cuda" not in status.devices:
        pytest.skip(status.detail)
    torch.manual_seed(0)
    args, kw, op = CASES[case]()

    def to_gpu(a):
        return a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a

    inputs, fn = _bind([to_gpu(a) for a in args], {k: to_gpu(v) for k, v in kw.items()}, op)
    dy = torch.randn_like(inputs[0]).requires_grad_()
    with fused_attn.use_backend(gpu_backend):
        _check_graph_gradient(fn, inputs, dy)
        _check_hvp_against_reference(fn, inputs, dy)
