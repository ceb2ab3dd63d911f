"""Backward passes that autograd can differentiate again.

The fused backward ops hand autograd their gradients as plain tensors: a
second derivative through them (a gradient penalty such as WGAN-GP or R1, a
Hessian-vector product, ``backward(create_graph=True)``) would come out as
zero, with only PyTorch's warning that the backward op has no autograd
kernel. So when a backward runs with ``create_graph=True`` (grad mode on
inside it), the autograd formulas (csrc/autograd.cpp; ops/se.py, eca.py and
cbam.py for the Triton ops) call these instead: the gradient of the eager
reference (``fused_attn.reference``) taken by autograd itself, a graph of
differentiable PyTorch ops. That costs eager's time, and only there; a
plain backward keeps the fused kernels, and so does an empty x (y is empty:
nothing depends on the gradients, which are constants, zero or NaN as the
fused backward gives them; the reference's amax would refuse an empty H·W).

The C++ autograd reaches them through the ops ``fused_attn::*_backward_graph``
(declared in csrc/fused_attn.cpp, implemented here for every device as
CompositeImplicitAutograd, so autograd records what they run).
"""
import torch

from .. import reference
from .._extension import HAS_C
from .se import no_autocast


def graph_grads(forward, inputs, grad_y):
    """The gradients of ``forward(*inputs)`` for ``grad_y`` with respect to
    each input (None where the input is None), as differentiable functions of
    the inputs and of grad_y."""
    # An input that does not require grad stands in as a leaf of its own:
    # autograd.grad wants every input in the graph. Its gradient is then only
    # a value (nothing above it needs one).
    leaves = [t if t is None or t.requires_grad else t.detach().requires_grad_() for t in inputs]
    present = [t for t in leaves if t is not None]
    with torch.enable_grad(), no_autocast(grad_y.device.type):
        y = forward(*leaves)
        grads = iter(torch.autograd.grad(y, present, grad_y, create_graph=True, allow_unused=True))
    out = []
    for t in leaves:
        g = None if t is None else next(grads)
        out.append(torch.zeros_like(t) if t is not None and g is None else g)
    return out


def se_graph_grads(grad_y, x, w1, b1, w2, b2, act, gate, pool):
    """(dx, dw1, db1, dw2, db2) of se_forward's y, None for absent parameters."""
    def forward(x, w1, b1, w2, b2):
        return reference.squeeze_excitation(x, w1, b1, w2, b2, act=act, gate=gate, pool=pool)

    return graph_grads(forward, (x, w1, b1, w2, b2), grad_y)


def eca_graph_grads(grad_y, x, w, b, padding, gate):
    """(dx, dw, db) of eca_forward's y, db None without a bias."""
    def forward(x, w, b):
        return reference.efficient_channel_attention(x, w, b, padding=padding, gate=gate)

    return graph_grads(forward, (x, w, b), grad_y)


def cbam_graph_grads(grad_y, x, w1, b1, w2, b2, ws, bn_w, bn_b, bn_rm, bn_rv, eps, act, gate, light, max_first):
    """(dx, dw1, db1, dw2, db2, dws, dbn_w, dbn_b) of cbam_forward's y, None for
    absent parameters. Running statistics given: eval mode, normalized with
    them (the autograd formulas pass the values the forward used: its
    bn_stats output); absent: the batch's statistics, nothing updated."""
    def forward(x, w1, b1, w2, b2, ws, bn_w, bn_b):
        return reference.cbam(x, w1, b1, w2, b2, ws.unsqueeze(0), bn_weight=bn_w, bn_bias=bn_b,
                              bn_running_mean=bn_rm, bn_running_var=bn_rv, bn_training=False, bn_eps=eps, act=act,
                              gate=gate, light=light, pool_order="max_mean" if max_first else "mean_max")

    return graph_grads(forward, (x, w1, b1, w2, b2, ws, bn_w, bn_b), grad_y)


if HAS_C:
    def _or_empty(g, like):   # the C++ ops' [0] tensor for "no such parameter"
        return like.new_empty((0,)) if g is None else g

    @torch.library.impl("fused_attn::se_backward_graph", "CompositeImplicitAutograd")
    def _se_backward_graph(grad_y, x, w1, b1, w2, b2, act, gate, pool):
        return tuple(_or_empty(g, w1) for g in se_graph_grads(grad_y, x, w1, b1, w2, b2, act, gate, pool))

    @torch.library.impl("fused_attn::eca_backward_graph", "CompositeImplicitAutograd")
    def _eca_backward_graph(grad_y, x, w, b, padding, gate):
        return tuple(_or_empty(g, w) for g in eca_graph_grads(grad_y, x, w, b, padding, gate))

    @torch.library.impl("fused_attn::cbam_backward_graph", "CompositeImplicitAutograd")
    def _cbam_backward_graph(grad_y, x, w1, b1, w2, b2, ws, bn_w, bn_b, bn_rm, bn_rv, eps, act, gate, light,
                             max_first):
        return tuple(_or_empty(g, w1) for g in cbam_graph_grads(grad_y, x, w1, b1, w2, b2, ws, bn_w, bn_b, bn_rm,
                                                                bn_rv, eps, act, gate, light, max_first))
