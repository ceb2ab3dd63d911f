"""fused_attn.convert on real timm and torchvision models (random weights, no
downloads): outputs and every parameter gradient match the unconverted model,
the report counts every attention block, state_dict keys and values are
unchanged, and the conversion pickles and reverses."""
import collections
import copy
import functools
import io

import pytest
import torch

import fused_attn
from fused_attn.convert import convert, unconvert

from .utils import cpu_backends

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

ATTENTION_CLASSES = {
    "SEModule", "EffectiveSEModule", "SqueezeExcite", "SqueezeExcitation", "EcaModule", "CecaModule",
    "CbamModule", "LightCbamModule", "EseModule",
}
# Blocks fused today: all of them.
FUSED_CLASSES = ATTENTION_CLASSES

MODELS = {
    "seresnet18": lambda: timm.create_model("seresnet18"),
    "seresnext26d_32x4d": lambda: timm.create_model("seresnext26d_32x4d"),
    "ecaresnet26t": lambda: timm.create_model("ecaresnet26t"),
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0"),
    "mobilenetv3_large_100": lambda: timm.create_model("mobilenetv3_large_100"),
    "rexnet_100": lambda: timm.create_model("rexnet_100"),
    "ese_vovnet19b_dw": lambda: timm.create_model("ese_vovnet19b_dw"),
    "legacy_seresnet18": lambda: timm.create_model("legacy_seresnet18"),
    "resnet18_cbam": lambda: timm.create_model("resnet18", block_args=dict(attn_layer="cbam")),
    "resnet18_lcbam": lambda: timm.create_model("resnet18", block_args=dict(attn_layer="lcbam")),
    "resnet18_ceca": lambda: timm.create_model("resnet18", block_args=dict(attn_layer="ceca")),
    "tv_mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "tv_efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "tv_regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(),
}
# One model for each (model family, block variant) pair of the timm models
# that MODELS leaves out (tools/convert_sweep.py lists the pairs, over every
# timm model): name -> image size (64 unless the model needs its own).
VARIANT_MODELS = {
    "mobilenetv3_rw": 64,     # timm SqueezeExcite, hard_swish / hard_sigmoid
    "mnasnet_small": 64,      # timm SqueezeExcite, relu / sigmoid
    "test_coatnet": 160,      # timm SEModule, silu (the MaxViT / CoAtNet family)
    "gcvit_xxtiny": 224,      # timm SEModule, gelu (GCViT)
    "hgnet_tiny": 64,         # HGNet's EseModule: effective SE, sigmoid
}
# The Triton interpreter is slow: it runs every model on smaller images
# (the last stages of most models are then 1×1, an edge case of its own).
IMAGE = {"cpu": 64, "triton": 48}


def attention_count(model, classes):
    """Modules of timm / torchvision classes with these names (fused_attn's
    own SqueezeExcite shares a name with timm's)."""
    return sum(type(m).__name__ in classes and not type(m).__module__.startswith("fused_attn")
               for m in model.modules())


def _backends():
    return [b for b in cpu_backends() if b != "reference"]


def _cases():
    for name in MODELS:
        for backend in _backends():
            yield pytest.param(name, backend, id=f"{name}-{backend}")


def _build(name, seed=0):
    torch.manual_seed(seed)
    model = MODELS[name]() if name in MODELS else timm.create_model(name)
    # Random BatchNorm statistics and affine parameters, so eval mode is not
    # an identity and folded BNs are exercised.
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    # No randomness in train mode (dropout, stochastic depth): the runs compared
    # must compute the same function.
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for attr in ("drop_rate", "drop_prob", "p"):
            if attr != "p" and isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)
        if type(m).__name__ == "StochasticDepth":
            m.p = 0.0
    return model


@pytest.mark.parametrize("name, backend", list(_cases()))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_converted_model_matches_original(name, backend, train, memory_format):
    original = _build(name).to(memory_format=memory_format).train(train)
    converted, report = convert(copy.deepcopy(original), inplace=True)

    assert report.total == attention_count(original, FUSED_CLASSES)
    assert len(report.skipped) == attention_count(original, ATTENTION_CLASSES - FUSED_CLASSES)
    assert attention_count(converted, FUSED_CLASSES) == 0 or report.total == 0
    assert converted.training == train and all(m.training == train for m in converted.modules())
    sd0, sd1 = original.state_dict(), converted.state_dict()
    assert list(sd0) == list(sd1)
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)

    def run(model, dtype, fused, N):
        size = IMAGE.get(backend, 64)
        x = torch.randn(N, 3, size, size, generator=torch.Generator().manual_seed(3)).to(memory_format=memory_format)
        dy = torch.randn(N, 1000, generator=torch.Generator().manual_seed(4))
        with fused_attn.use_backend(backend if fused else "reference"):
            y = model(x.to(dtype))
            return [y] + list(torch.autograd.grad(y, list(model.parameters()), dy.to(dtype)))

    names = ["output"] + [n for n, _ in converted.named_parameters()]
    assert len(names) == 1 + len(list(original.parameters()))
    # float32, as trained: the output per element, the gradients by the
    # relative norm of all of them together. A whole network in fp32 turns
    # rounding-level differences into flipped ReLU masks (activations within
    # 1e-7 of 0) and, in train mode, BatchNorm over few values amplifies them
    # (a batch of 4 here; with 2, rexnet's fp32 gradients moved by 26%):
    # single gradient elements can legitimately differ by O(gradient)
    # (seen in ecaresnet26t, mobilenetv3), so per-element fp32 gradient checks
    # would test the network's conditioning, not the kernels.
    got, ref = run(converted, torch.float32, True, 4), run(original, torch.float32, False, 4)
    torch.testing.assert_close(got[0], ref[0], atol=1e-3, rtol=1e-3)
    diff = torch.cat([(g - r).flatten() for g, r in zip(got[1:], ref[1:], strict=True)]).norm()
    rel = (diff / torch.cat([r.flatten() for r in ref[1:]]).norm()).item()
    assert rel < 3e-2, f"fp32 gradients differ by {rel:.2e} (relative norm over all parameters)"
    # float64: every element of every gradient — what catches a subtly wrong
    # kernel (a wrong term is off by 1e-3 or more; conditioning costs ≤ 1e-6).
    # (fp32 across all models and modes moved by up to 1.2e-2 by that norm.)
    converted64, original64 = copy.deepcopy(converted).double(), copy.deepcopy(original).double()
    got, ref = run(converted64, torch.float64, True, 2), run(original64, torch.float64, False, 2)
    for name, g, r in zip(names, got, ref, strict=True):
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g, r, atol=1e-6 * scale, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    if train:  # running statistics updated alike
        for k in sd0:
            if "running" in k:
                torch.testing.assert_close(original.state_dict()[k], converted.state_dict()[k], atol=1e-4,
                                           rtol=1e-4)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(VARIANT_MODELS))
def test_variant_model_matches_original(name, train):
    """The rest of the block variants timm's models use, one model each: the
    C++ backend in float64 (where a wrong term shows and conditioning does
    not), NCHW; MODELS above runs the full matrix on fewer models."""
    original = _build(name).double().train(train)
    converted, report = convert(copy.deepcopy(original))
    assert report.total == attention_count(original, FUSED_CLASSES) > 0 and not report.skipped, str(report)
    size = VARIANT_MODELS[name]
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def run(model, backend):
        with fused_attn.use_backend(backend):
            y = model(x)
            dy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(4))
            return [y] + list(torch.autograd.grad(y, list(model.parameters()), dy))

    got, ref = run(converted, "cpu"), run(original, "reference")
    names = ["output"] + [n for n, _ in original.named_parameters()]
    for pname, g, r in zip(names, got, ref, strict=True):
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g, r, atol=1e-6 * scale, rtol=1e-5, msg=lambda m: f"{pname}: {m}")


def test_report_says_what_it_did():
    model = _build("efficientnet_b0")
    model, report = convert(model)
    text = str(report)
    assert "16 module(s) swapped" in text and "-> fused_attn.nn.SqueezeExcite" in text
    assert report.total == 16 and not report.skipped
    cbam = _build("resnet18_cbam")
    _, report = convert(cbam)
    assert report.total == 8 and not report.skipped
    assert "8 × timm.layers.cbam.CbamModule -> fused_attn.nn.CBAM" in str(report)


def test_idempotent_and_reversible():
    model = _build("seresnet18").eval()
    keys = list(model.state_dict())
    types = collections.Counter(type(m).__name__ for m in model.modules())
    model, first = convert(model)
    model, second = convert(model)
    assert first.total == 8 and second.total == 0 and second.already == 8
    model, back = unconvert(model)
    assert back.total == 8
    assert collections.Counter(type(m).__name__ for m in model.modules()) == types
    assert list(model.state_dict()) == keys


def test_not_inplace_leaves_the_original_alone():
    model = _build("ecaresnet26t")
    converted, report = convert(model, inplace=False)
    assert report.total == 8
    assert attention_count(model, {"EcaModule"}) == 8
    assert attention_count(converted, {"EcaModule"}) == 0


def test_include_exclude():
    model = _build("seresnet18")
    _, report = convert(copy.deepcopy(model), include=["layer4.*"])
    assert report.total == 2 and all(p.startswith("layer4.") for p in report.paths)
    _, report = convert(copy.deepcopy(model), exclude=["se"])
    assert report.total == 0
    _, report = convert(copy.deepcopy(model), include=lambda path, kind: path.startswith("layer1"))
    assert report.total == 2
    # A single string is one kind or pattern, not an iterable of characters
    # (whose "*" would match every path).
    _, report = convert(copy.deepcopy(model), include="layer4.*")
    assert report.total == 2 and all(p.startswith("layer4.") for p in report.paths)
    _, report = convert(copy.deepcopy(model), include="se")
    assert report.total == 8
    _, report = convert(copy.deepcopy(model), exclude="se")
    assert report.total == 0


def test_converted_model_pickles_and_loads_checkpoints_both_ways():
    model = _build("mobilenetv3_large_100").eval()
    converted, _ = convert(copy.deepcopy(model))
    buf = io.BytesIO()
    torch.save(converted, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), converted(x))
    # A checkpoint of either loads into the other, strictly.
    model.load_state_dict(converted.state_dict(), strict=True)
    converted.load_state_dict(model.state_dict(), strict=True)


def test_root_module_and_containers():
    se = timm.layers.SEModule(32)
    fused, report = convert(se)
    assert isinstance(fused, fused_attn.nn.SqueezeExcite) and report.total == 1
    tree = torch.nn.ModuleDict({"a": torch.nn.Sequential(timm.layers.EcaModule(64), torch.nn.ReLU()),
                                "b": torch.nn.ModuleList([timm.layers.SEModule(16)])})
    tree, report = convert(tree)
    assert report.total == 2
    assert isinstance(tree["a"][0], fused_attn.nn.EfficientChannelAttention)


def test_unknown_class_with_a_known_layout_is_reported_not_converted():
    class MySE(timm.layers.SEModule):
        def forward(self, x):
            return super().forward(x) * 2

    model = torch.nn.Sequential(MySE(32))
    _, report = convert(model)
    assert report.total == 0 and "unknown class" in report.skipped[0].reason
    _, report = convert(model, strict_classes=False)
    assert report.total == 1


def test_other_blocks_with_attention_like_names_are_left_unreported():
    """timm's gMLP GatedMlp has fc1 / act / gate / fc2 children like an SE,
    around Linear layers, and davit's ChannelAttention is a transformer over
    channels: neither is an attention block of ours, so neither is swapped
    nor listed as a lookalike (convert once listed 90 GatedMlp in gmlp_b16_224
    under an 'unsupported gate' reason, and every davit ChannelAttention).
    What is an SE but cannot be fused is still listed."""
    from timm.layers.mlp import GatedMlp
    from timm.models.davit import ChannelAttention
    from timm.models.mlp_mixer import SpatialGatingUnit

    model = torch.nn.Sequential(GatedMlp(16, 32, gate_layer=functools.partial(SpatialGatingUnit, seq_len=4)),
                                ChannelAttention(16, num_heads=2), timm.layers.SEModule(16))
    _, report = convert(model)
    assert report.total == 1 and report.skipped == [], str(report)
    # Nor is a SqueezeNet, whose class name once made it a lookalike.
    _, report = convert(torchvision.models.squeezenet1_0())
    assert report.total == 0 and report.skipped == [], str(report)
    # Still reported, with the reason: a known class whose conv is wrapped,
    # and user blocks named like an SE, whatever their layers.
    wrapped = timm.layers.EffectiveSEModule(16)
    wrapped.fc = torch.nn.Sequential(wrapped.fc)

    class SEBlock(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc1, self.act, self.fc2 = torch.nn.Linear(c, 4), torch.nn.ReLU(), torch.nn.Linear(4, c)
            self.gate = torch.nn.Sigmoid()

    class SqueezeBlock(torch.nn.Module):   # MobileNetV3's SE in many reimplementations
        def __init__(self, c):
            super().__init__()
            self.dense = torch.nn.Sequential(torch.nn.Linear(c, 4), torch.nn.ReLU(), torch.nn.Linear(4, c))

    _, report = convert(torch.nn.Sequential(wrapped, SEBlock(16), SqueezeBlock(16)))
    assert report.total == 0 and [s.path for s in report.skipped] == ["0", "1", "2"], str(report)
    assert "fc must be a 1x1 Conv2d" in report.skipped[0].reason
    # A Conv2d SE that cannot be represented is still reported, with its reason.
    _, report = convert(torch.nn.Sequential(timm.layers.SEModule(16, act_layer=torch.nn.LeakyReLU)))
    assert report.total == 0 and "LeakyReLU" in report.skipped[0].reason


@pytest.mark.parametrize("name", ["seresnet18", "resnet18_cbam", "ecaresnet26t", "rexnet_100"])
def test_convert_on_the_meta_device_then_load(name):
    """Large-model initialisation: build and convert on the meta device, then
    to_empty and load a checkpoint of the unconverted model. Nothing of the
    fused modules may live outside their state_dict (a buffer left out of it
    would keep to_empty's garbage)."""
    original = _build(name).eval()
    with torch.device("meta"):
        model = MODELS[name]()
    model, report = convert(model)
    assert report.total == attention_count(original, FUSED_CLASSES) > 0
    # Every tensor the fused modules hold is in their state_dict: no buffer
    # beyond those the original model keeps out of it.
    extra = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    assert extra == {n for n, _ in original.named_buffers()} - set(original.state_dict())
    model = model.to_empty(device="cpu")
    with torch.no_grad():   # to_empty's memory is anything, often zeros: make what load misses show
        for t in list(model.parameters()) + list(model.buffers()):
            t.fill_(float("nan") if t.is_floating_point() else -1)
    model.load_state_dict(original.state_dict())
    model.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), atol=1e-4, rtol=1e-4)
