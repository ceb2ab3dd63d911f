"""Map activation / gate modules of timm and torchvision to fused_attn names.

A module is recognised by its class (and, for GELU, its ``approximate``
setting); anything else is refused with its class name, never guessed.
"""
from torch import nn


def _timm_classes(*names):
    try:
        from timm.layers import activations, activations_me
    except Exception:  # timm is optional
        return ()
    found = []
    for mod in (activations, activations_me):
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return tuple(found)


def activation_name(m, owner):
    """Name of hidden activation module ``m`` of ``owner`` (for messages)."""
    if isinstance(m, nn.ReLU):
        return "relu"
    if isinstance(m, nn.SiLU) or isinstance(m, _timm_classes("Swish", "SwishMe")):
        return "silu"
    if isinstance(m, nn.GELU):
        return "gelu_tanh" if m.approximate == "tanh" else "gelu"
    if isinstance(m, _timm_classes("GELU")):
        return "gelu"
    if isinstance(m, _timm_classes("GELUTanh")):
        return "gelu_tanh"
    if isinstance(m, nn.Hardswish) or isinstance(m, _timm_classes("HardSwish", "HardSwishMe")):
        return "hard_swish"
    raise ValueError(f"{owner}: unsupported activation {type(m).__module__}.{type(m).__qualname__}; "
                     f"fused_attn supports ReLU, SiLU/Swish, GELU (erf or tanh) and Hardswish")


def gate_name(m, owner):
    """Name of gate module ``m`` of ``owner``."""
    if isinstance(m, nn.Sigmoid) or isinstance(m, _timm_classes("Sigmoid")):
        return "sigmoid"
    if isinstance(m, nn.Hardsigmoid) or isinstance(m, _timm_classes("HardSigmoid", "HardSigmoidMe")):
        return "hard_sigmoid"
    raise ValueError(f"{owner}: unsupported gate {type(m).__module__}.{type(m).__qualname__}; "
                     f"fused_attn supports Sigmoid and Hardsigmoid")
