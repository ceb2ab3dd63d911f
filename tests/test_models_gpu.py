"""Converted timm / torchvision models on a GPU: every model of test_convert.py
on each GPU backend (the CUDA kernels, Triton) in bf16 under
torch.autocast("cuda"), eval and train, NCHW and channels_last, against the
unconverted model under the same autocast; fp16 autocast on a mixed block;
and torch.compile(fullgraph=True) with Inductor of a converted model on CUDA
tensors (the Triton ops traced, which CPU tensors cannot do). Skipped without
a GPU (conftest.py)."""
import copy

import pytest
import torch

import fused_attn

from .test_convert import ATTENTION_CLASSES, MODELS, _build, attention_count
from .test_robustness import autocast_block_outputs
from .utils import gpu_backend_fixture

pytestmark = pytest.mark.gpu

backend = gpu_backend_fixture(force=False)


def _rel(got, ref):
    """‖got − ref‖ / ‖ref‖ over a list of tensors together, in float64."""
    diff = torch.cat([(g.double() - r.double()).flatten() for g, r in zip(got, ref, strict=True)]).norm()
    return (diff / torch.cat([r.double().flatten() for r in ref]).norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_converted_model_bf16_autocast_matches_original(backend, name, train, memory_format):
    original = _build(name).cuda().to(memory_format=memory_format).train(train)
    converted, report = fused_attn.convert(copy.deepcopy(original), inplace=True)
    assert report.total == attention_count(original, ATTENTION_CLASSES)
    assert next(converted.parameters()).is_cuda
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(3)).cuda()
    x = x.to(memory_format=memory_format)
    dy = torch.randn(8, 1000, generator=torch.Generator().manual_seed(4)).cuda()

    def run(model, fused):
        with fused_attn.use_backend(backend if fused else "reference"), torch.autocast("cuda", torch.bfloat16):
            y = model(x)
        return [y] + list(torch.autograd.grad(y.float(), list(model.parameters()), dy))

    got, ref = run(converted, True), run(original, False)
    assert got[0].dtype == ref[0].dtype
    assert all(g.dtype == r.dtype for g, r in zip(got[1:], ref[1:], strict=True))
    # A whole network in bf16: both sides round every activation to 8 bits of
    # mantissa, so compare by relative norms (per element, a flipped ReLU or a
    # moved max-pool tie shifts single values by O(value)). A wrong term in a
    # kernel moves these by O(1); bf16 rounding through ~20 layers by ~1e-2.
    assert _rel(got[:1], ref[:1]) < 3e-2, "output"
    assert _rel(got[1:], ref[1:]) < 6e-2, "parameter gradients"
    if train:
        sd_got, sd_ref = converted.state_dict(), original.state_dict()
        for k in sd_ref:
            if "running" in k:
                torch.testing.assert_close(sd_got[k].float(), sd_ref[k].float(), atol=2e-2, rtol=2e-2, msg=k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_autocast_cuda_takes_and_returns_what_eager_does(backend, dtype, memory_format):
    """conv → SE → conv → ECA → CBAM under autocast: the blocks take
    low-precision activations with fp32 parameters, return eager's dtype, and
    give the fp32 parameters fp32 gradients."""
    y, y_ref = autocast_block_outputs(backend, "cuda", dtype, memory_format)
    assert _rel([y], [y_ref]) < 2e-2


@pytest.mark.parametrize("name", ["seresnet18", "resnet18_cbam", "ecaresnet26t"])
def test_compile_converted_model_inductor_fullgraph(backend, name):
    """torch.compile(fullgraph=True) with Inductor of a converted model on CUDA
    tensors: no graph break, no recompile for a second input of the same
    shape, a dynamic batch, outputs and input gradients as eager."""
    model = _build(name).cuda().eval()
    model, _ = fused_attn.convert(model)
    torch._dynamo.reset()
    with fused_attn.use_backend(backend):
        compiled = torch.compile(model, fullgraph=True)
        for step in range(2):
            x = torch.randn(2, 3, 64, 64, device="cuda").requires_grad_()
            with torch._dynamo.config.patch(error_on_recompile=step > 0):
                y = compiled(x)
            y_eager = model(x)
            assert _rel([y], [y_eager]) < 5e-3   # TF32 convolutions on both sides
            g, = torch.autograd.grad(y.sum(), [x])
            g_eager, = torch.autograd.grad(y_eager.sum(), [x])
            assert _rel([g], [g_eager]) < 1e-2
        torch._dynamo.reset()
        dynamic = torch.compile(model, fullgraph=True, dynamic=True)
        for n in (2, 3, 5):
            x = torch.randn(n, 3, 64, 64, device="cuda")
            assert _rel([dynamic(x)], [model(x)]) < 5e-3
