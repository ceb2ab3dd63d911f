"""Squeeze-and-Excitation in eager PyTorch, every variant found in the wild.

Covers timm ``SEModule`` (biases on/off, ``add_maxpool``, a norm after fc1),
timm ``EffectiveSEModule`` (one layer), timm's EfficientNet / MobileNetV3
``SqueezeExcite`` and torchvision ``ops.SqueezeExcitation``.
"""
import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F

#: Hidden activations, by name.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "hard_swish": F.hardswish,
}


def hard_sigmoid(x):
    """``F.hardsigmoid``, written as relu6(x + 3) / 6 (timm's definition): the
    same values, and an exact float64 gradient, where ATen's CPU
    hardsigmoid_backward multiplies by a float32 1/6 (a 2e-8 relative error
    that would otherwise be the oracle's, not ours)."""
    return F.relu6(x + 3) / 6


#: Gates, by name.
GATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sigmoid": torch.sigmoid, "hard_sigmoid": hard_sigmoid}
#: Pooling: the spatial mean, or timm's ``add_maxpool`` mix 0.5·mean + 0.5·max.
POOLS = ("avg", "avgmax")


def squeeze_excitation(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor] = None,
                       fc2_weight: Optional[torch.Tensor] = None, fc2_bias: Optional[torch.Tensor] = None, *,
                       act: str = "relu", gate: str = "sigmoid", pool: str = "avg",
                       norm: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """y = x · gate(fc2(act(norm(fc1(pool(x)))))), broadcast over H and W.

    x: [N, C, H, W]. fc1_weight: [rd, C] (or [rd, C, 1, 1]); fc2_weight: [C, rd].
    ``fc2_weight=None`` is the one-layer effective SE: y = x · gate(fc1(pool(x))),
    with fc1_weight [C, C]. ``norm`` (a module taking [N, rd, 1, 1], e.g. a
    BatchNorm2d) sits between fc1 and the activation, as in timm's rexnet; it
    runs in x's dtype, as it does in the module it comes from.

    As the contract asks of every backend, pooling and the excitation run in
    float32 (float64 for float64 x) and y is rounded to x's dtype once.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    p = x.mean((2, 3), dtype=acc)
    if pool == "avgmax":
        p = 0.5 * p + 0.5 * x.amax((2, 3)).to(acc)
    elif pool != "avg":
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")

    def linear(v, w, b):
        return F.linear(v, w.flatten(1).to(acc), None if b is None else b.to(acc))

    z = linear(p, fc1_weight, fc1_bias)
    if fc2_weight is not None:
        if norm is not None:
            z = norm(z[:, :, None, None].to(x.dtype)).flatten(1).to(acc)
        z = linear(ACTIVATIONS[act](z), fc2_weight, fc2_bias)
    return (x * GATES[gate](z)[:, :, None, None]).to(x.dtype)
