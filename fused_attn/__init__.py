"""fused_attn: fused kernels for the channel-attention blocks of CNNs.

    y = fused_attn.squeeze_excitation(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    y = fused_attn.efficient_channel_attention(x, conv_weight, padding="zeros")
    se = fused_attn.nn.SqueezeExcite.from_module(timm_or_torchvision_se_module)
    model, report = fused_attn.convert(timm_model)   # every SE / ECA / CBAM block, in place

``fused_attn.backends()`` tells which implementations can run here;
``fused_attn.use_backend(name)`` or ``FUSED_ATTN_BACKEND`` forces one.
"""
from . import _extension, ops, reference
from . import nn  # noqa: F401  (fused_attn.nn.SqueezeExcite)
from ._backends import BACKENDS, backends, current_choice, use_backend
from .convert import convert, unconvert
from .functional import cbam, efficient_channel_attention, squeeze_excitation

HAS_C = _extension.HAS_C

__version__ = "0.1.0"
__all__ = ["BACKENDS", "HAS_C", "backends", "cbam", "convert", "current_choice", "efficient_channel_attention", "nn", "ops",
           "reference", "squeeze_excitation", "unconvert", "use_backend"]
