"""The suite's shortcut through Triton's interpreter (tests/triton_interpreter.py)
computes what the interpreter as it ships computes, bit for bit, and is in
use: a changed Triton that the shortcut no longer fits fails here, not in a
kernel's test."""
import os

import pytest
import torch

import fused_attn

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or torch.cuda.is_available(),
                                reason="the Triton interpreter (CPU tensors) only")


def _run_all_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 5, 7, generator=g).to(memory_format=torch.channels_last).requires_grad_()
    w1, b1 = torch.randn(6, 24, generator=g) * 0.3, torch.randn(6, generator=g)
    w2, b2 = torch.randn(24, 6, generator=g) * 0.3, torch.randn(24, generator=g)
    conv = torch.randn(1, 1, 3, generator=g)
    bn = dict(weight=torch.rand(1, generator=g) + 0.5, bias=torch.randn(1, generator=g),
              running_mean=torch.zeros(1), running_var=torch.ones(1))
    spatial = torch.randn(1, 2, 7, 7, generator=g) * 0.2
    dy = torch.randn(x.shape, generator=g)
    outs = []
    with fused_attn.use_backend("triton"):
        for y in (fused_attn.squeeze_excitation(x, w1, b1, w2, b2, pool="avgmax"),
                  fused_attn.efficient_channel_attention(x, conv),
                  fused_attn.cbam(x, w1, None, w2, None, spatial, **{f"bn_{k}": v for k, v in bn.items()})):
            outs += [y, *torch.autograd.grad(y, x, dy)]
    return outs


def test_shortcut_is_installed_and_changes_no_bit(monkeypatch):
    from triton.runtime import interpreter as ti

    from .triton_interpreter import skip_nested_patching

    # Installed by conftest.py unless FUSED_ATTN_PLAIN_INTERPRETER=1; then
    # only for this test.
    monkeypatch.setattr(ti, "_patch_lang", ti._patch_lang)
    monkeypatch.setattr(ti.GridExecutor, "__call__", ti.GridExecutor.__call__)
    assert skip_nested_patching(), "the shortcut no longer fits this Triton's interpreter"
    plain = ti._patch_lang.plain

    calls = {"n": 0}
    builtin = ti._patch_builtin

    def counting(*args, **kwargs):
        calls["n"] += 1
        return builtin(*args, **kwargs)

    monkeypatch.setattr(ti, "_patch_builtin", counting)
    fast = _run_all_ops()
    fast_calls, calls["n"] = calls["n"], 0
    monkeypatch.setattr(ti, "_patch_lang", plain)   # the interpreter as it ships, for the helpers' calls
    ref = _run_all_ops()
    plain_calls = calls["n"]
    for a, b in zip(fast, ref, strict=True):
        assert torch.equal(a, b)
    assert fast_calls * 5 < plain_calls, (fast_calls, plain_calls)
