"""The README's examples (the convert, SqueezeExcite, use_backend and
backends() snippets), run as written, and the signatures it writes out: each test reads its snippet (and the
output the README shows for it) from README.md itself, so an edit to either
the README or the code that makes them disagree fails here. The convert
report names timm's classes and counts its blocks, so a timm release that
moves them fails here too: the README would then show a report no user sees."""
import contextlib
import io
import os
import re

import pytest
import torch

import fused_attn

timm = pytest.importorskip("timm")

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_text(flat=False):
    """README.md; ``flat``: its whitespace runs as single spaces (prose quoted
    across line breaks)."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return " ".join(text.split()) if flat else text


def block_after(marker, language):
    """The first ``language`` block after the first line of the README holding
    ``marker``, and the block that follows it."""
    text = readme_text()
    start = text.index(marker)
    found = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text[start:], re.M | re.S)]
    i = next(i for i, (lang, _) in enumerate(found) if lang == language)
    return found[i][1], (found[i + 1] if i + 1 < len(found) else (None, None))


def run_printing(code, namespace):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, README, "exec"), namespace)
    return out.getvalue()


def test_convert_a_timm_model_prints_what_the_readme_shows():
    """The "Convert a timm model" snippet, run as written (efficientnet_b0 with
    random weights): the report it prints is the README's text block."""
    code, (lang, shown) = block_after("## Convert a timm model", "python")
    assert lang == "text"
    ns = {}
    printed = run_printing(code, ns)
    assert printed.strip() == shown.strip()
    model = ns["model"]
    assert isinstance(model.blocks[1][0].se, fused_attn.nn.SqueezeExcite)
    x = torch.randn(1, 3, 64, 64)
    # ...and the converted model gives the unconverted one's numbers.
    with torch.no_grad():
        fused = model.eval()(x)
        original = fused_attn.unconvert(model)[0](x)
    torch.testing.assert_close(fused, original, rtol=1e-4, atol=1e-5)


def test_the_reason_the_readme_quotes_for_a_cbam_with_a_spatial_bias():
    """The README quotes the report's line for a CBAM whose spatial conv has a
    bias; a resnet18 with CBAM and such a conv gives that line."""
    quote = re.search(r"e\.g\. a CBAM whose spatial conv has a bias: `([^`]*)`", readme_text(flat=True)).group(1)
    head, _, tail = quote.partition(" ... ")
    assert head and tail, quote
    model = timm.create_model("resnet18", block_args=dict(attn_layer="cbam"), num_classes=10)
    conv = model.layer1[0].se.spatial.conv
    conv.conv = torch.nn.Conv2d(2, 1, 7, padding=3, bias=True)
    _, report = fused_attn.convert(model)
    lines = [ln.strip() for ln in str(report).splitlines() if ln.strip().startswith(head)]
    assert len(lines) == 1 and tail in lines[0], (quote, str(report))
    assert report.total == 7   # the other seven CBAMs are converted


def test_the_squeeze_excite_module_snippet():
    """The `fused_attn.nn.SqueezeExcite` snippet, with the timm module it names:
    the state_dict loads unchanged, and from_module shares the parameters."""
    code, _ = block_after("### `fused_attn.nn.SqueezeExcite`", "python")
    from timm.layers.squeeze_excite import SEModule
    timm_se_module = SEModule(256, rd_channels=16)
    ns = {"fused_attn": fused_attn, "timm_se_module": timm_se_module, "m": timm_se_module}
    exec(compile(code, README, "exec"), ns)
    x = torch.randn(2, 256, 5, 5)
    with torch.no_grad():
        want = timm_se_module(x)
        torch.testing.assert_close(ns["se"](x), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ns["fused"](x), want, rtol=1e-5, atol=1e-6)
    assert ns["fused"].fc1.weight is timm_se_module.fc1.weight


def test_the_use_backend_snippet(monkeypatch):
    """Run as written, the block runs the reference (counted), with the C++
    backend's numbers."""
    if not fused_attn.HAS_C:
        pytest.skip("C++ extension not built")
    code, _ = block_after("### Backends", "python")
    model = fused_attn.convert(timm.create_model("seresnet18", num_classes=10).eval())[0]
    x = torch.randn(1, 3, 32, 32)
    ns = {"fused_attn": fused_attn, "model": model, "x": x}
    calls = []
    with torch.no_grad():
        with fused_attn.use_backend("cpu"):
            want = model(x)
        real = fused_attn.reference.squeeze_excitation

        def counting(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(fused_attn.reference, "squeeze_excitation", counting)
        exec(compile(code, README, "exec"), ns)
    torch.testing.assert_close(ns["y"], want, rtol=1e-5, atol=1e-6)
    assert calls, "use_backend('reference') did not run the reference"


def test_backends_prints_what_the_readme_shows():
    """The `fused_attn.backends()` snippet, run as written: the README's backend
    names, in its order. What each says is this machine's (CI's has no GPU, a
    GPU machine's has), so only the names are compared, and the reference's
    line, which is the same everywhere."""
    code, (lang, shown) = block_after("`fused_attn.backends()` says what can run", "python")
    assert lang == "text"
    printed = run_printing(code, {"fused_attn": fused_attn})
    lines, shown_lines = printed.strip().splitlines(), shown.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == [ln.split()[0] for ln in shown_lines]
    assert lines[-1] == shown_lines[-1]


def _shown_signature(text):
    """Parameters of a signature as the README writes it, ``name(a, b=1, *, c="x")``
    (comments dropped): [(name, default text or None, keyword-only)]."""
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    inner = text[text.index("(") + 1:text.rindex(")")]
    params, keyword_only = [], False
    for token in (t.strip() for t in inner.split(",")):
        if token == "*":
            keyword_only = True
        elif token:
            name, _, default = token.partition("=")
            params.append((name.strip(), default.strip() or None, keyword_only))
    return params


def _check_signature(shown, fn, *, may_omit=()):
    """The README's parameters are fn's, in order, keyword-only from the same
    place, with the same defaults where it shows one; only ``may_omit`` (at
    the end) may be left out."""
    import inspect
    sig = inspect.signature(fn)
    actual = list(sig.parameters.values())
    names = [n for n, _, _ in shown]
    assert names == [p.name for p in actual][:len(names)], (names, list(sig.parameters))
    assert {p.name for p in actual[len(names):]} <= set(may_omit), [p.name for p in actual[len(names):]]
    for name, default, keyword_only in shown:
        p = sig.parameters[name]
        assert (p.kind == p.KEYWORD_ONLY) == keyword_only, (fn.__name__, name, p.kind)
        if default is not None:
            assert eval(default, {"__builtins__": {}}) == p.default, (fn.__name__, name, default, p.default)


@pytest.mark.parametrize("name", ["squeeze_excitation", "efficient_channel_attention", "cbam"])
def test_the_api_signatures_are_the_functions(name):
    """Each function's README signature block (`y = fused_attn.NAME(...)`):
    its parameters, their order, where keyword-only ones start, and every
    default shown are the function's own."""
    code, _ = block_after(f"### `fused_attn.{name}`", "python")
    assert code.lstrip().startswith(f"y = fused_attn.{name}("), code
    _check_signature(_shown_signature(code), getattr(fused_attn, name))


@pytest.mark.parametrize("cls", ["EfficientChannelAttention", "CBAM"])
def test_the_module_signatures_are_the_constructors(cls):
    """The constructors the README writes out in its text (device and dtype,
    which it leaves out, are the only parameters it may omit)."""
    shown = re.search(rf"`{cls}\(([^`]*)\)`", readme_text(flat=True)).group(0).strip("`")
    # inspect.signature of a class: its __init__'s, without self.
    _check_signature(_shown_signature(shown), getattr(fused_attn.nn, cls), may_omit=("device", "dtype"))
