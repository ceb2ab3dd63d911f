"""fused_attn.convert over every model timm and torchvision can build.

    python tools/convert_sweep.py [--md OUT.md] [--filter GLOB] [--check]

Builds each architecture of `timm.list_models()` and
`torchvision.models.list_models()` on the meta device (no memory, no
weights; the few whose constructors read their weights on the CPU; ~3
minutes for the lot on 2 cores), converts it and converts it back, and checks
what convert promises on each:
  * it does not raise;
  * the report's count equals the number of modules of the classes convert
    knows (`convert._known_attention_class`) found in the model, less those
    the report lists as left unconverted;
  * `state_dict()` keys, in order, are the same before, after convert and
    after unconvert, and unconvert puts every original class back.
Then it writes what was swapped and what was left (with the reason and a
model that has it); each swapped class with each variant of its forward and
the test model that checks it numerically; and the modules convert neither
swapped nor reported that look like a gate over a projection (see
unrecognised()), so that a new timm release's attention blocks show up here
even when neither the class list nor the lookalike names know them.
Numbers are not checked (meta tensors): tests/test_convert.py does that on
real weights for a dozen models. --check exits 1 when any model breaks an
invariant above (a model that cannot be built at all, say a timm
release's bug, is listed but does not fail it).
"""
import argparse
import collections
import fnmatch
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import fused_attn  # noqa: E402
from fused_attn.convert import _kind, _known_attention_class, _qualname  # noqa: E402


def _builders(pattern):
    import timm
    for name in timm.list_models(pattern):
        yield "timm", name, lambda name=name: timm.create_model(name, pretrained=False)
    # Kinds no registered timm model uses by default, as create_attn builds them.
    # (Labelled as tests/test_convert.py's MODELS name them.)
    for kind in ("se", "ese", "eca", "ceca", "cbam", "lcbam"):
        label = f"resnet18_{kind}"
        if fnmatch.fnmatchcase(label, pattern):
            yield "timm", label, lambda kind=kind: timm.create_model(
                "resnet18", pretrained=False, block_args=dict(attn_layer=kind))
    try:
        import torchvision
    except ImportError:
        return
    import inspect
    for name in torchvision.models.list_models():
        if fnmatch.fnmatchcase(name, pattern):
            # Detection and segmentation builders fetch backbone weights unless told not to.
            no_weights = {"weights": None}
            if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
                no_weights["weights_backbone"] = None
            yield "torchvision", name, lambda name=name, kw=no_weights: torchvision.models.get_model(name, **kw)


def _classes(model):
    return collections.Counter(_qualname(m) for m in model.modules())


def variant(fused):
    """What distinguishes one fused block's forward from another's (sizes
    apart): its kind as convert names it (se, ese, eca, ceca, cbam, lcbam),
    then what else its forward varies by."""
    kind = _kind(None, fused)
    if kind == "ese":   # one conv, no activation
        return f"ese gate={fused.gate} pool={fused.pool}" + ("" if fused.part("fc").bias is not None else " -bias")
    if kind == "se":
        bn = fused.part("bn")
        return (f"se act={fused.act} gate={fused.gate} pool={fused.pool}"
                + (" +bn" if bn is not None and not isinstance(bn, torch.nn.Identity) else "")
                + ("" if fused.part("fc1").bias is not None and fused.part("fc2").bias is not None else " -bias"))
    if kind in ("eca", "ceca"):
        return f"{kind} gate={fused.gate}" + (" +bias" if fused.conv.bias is not None else "")
    return kind


_GATE_NAMES = re.compile(r"(?i)sigmoid|gate")


def unrecognised(model, report):
    """Modules convert neither swapped nor reported that look like a gate over
    a projection (a 1x1 conv or Linear child and a sigmoid-like child): the
    blocks a class list and a name pattern would miss."""
    seen = set(report.paths) | {s.path for s in report.skipped}
    out = []
    for path, m in model.named_modules():
        # (A swapped or reported block's parts, timm CBAM's ChannelAttn say, are not blocks of their own.)
        if any(path == p or path.startswith(p + ".") or not p for p in seen):
            continue
        children = list(m.children())
        if (any(isinstance(c, (torch.nn.Conv2d, torch.nn.Linear)) for c in children)
                and any(_GATE_NAMES.search(type(c).__name__) for c in children)):
            out.append(_qualname(m))
    return out


def sweep_one(model):
    """(report, problems, variants, candidates) for one model built on the meta
    device: problems, a list of strings; variants, the set of (original class,
    variant()) of the blocks it swapped; candidates, unrecognised()."""
    keys = list(model.state_dict())
    before = _classes(model)
    known = sum(1 for m in model.modules() if _known_attention_class(m))
    problems = []
    original = {path: _qualname(m) for path, m in model.named_modules()}
    model, report = fused_attn.convert(model)
    variants = {(original[path], variant(model.get_submodule(path))) for path in report.paths}
    candidates = unrecognised(model, report)
    left = [path for path, m in model.named_modules() if _known_attention_class(m)]
    if report.total + len(left) != known:
        problems.append(f"the report counts {report.total} swapped; the model had {known} blocks of "
                        f"known classes and {len(left)} are left")
    unlisted = set(left) - {s.path for s in report.skipped}
    if unlisted:
        problems.append(f"left unconverted but not in the report: {sorted(unlisted)[:3]}")
    if list(model.state_dict()) != keys:
        problems.append("state_dict keys changed by convert")
    model, back = fused_attn.unconvert(model)
    if back.total != report.total:
        problems.append(f"unconvert put back {back.total} of {report.total}")
    if list(model.state_dict()) != keys:
        problems.append("state_dict keys changed by unconvert")
    if _classes(model) != before:
        problems.append("unconvert did not restore the original classes")
    return report, problems, variants, candidates


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--md", help="write the summary here as markdown")
    ap.add_argument("--filter", default="*", help="model name glob")
    ap.add_argument("--check", action="store_true", help="exit 1 if any model breaks an invariant")
    args = ap.parse_args()

    import timm
    import torchvision
    t0 = time.time()
    built = with_swaps = 0
    swapped = collections.Counter()
    models_per_class = collections.Counter()
    skipped = collections.Counter()
    example = {}
    failures = []
    on_cpu = []
    pairs = collections.defaultdict(list)   # (attention class, variant) -> [(parameters, lib, model)]
    candidates = collections.Counter()     # unrecognised() class -> modules
    candidate_example = {}
    for lib, name, build in _builders(args.filter):
        try:
            try:
                with torch.device("meta"):
                    model = build()
            except NotImplementedError:  # an __init__ that reads its weights (torchvision's RegNets)
                on_cpu.append(name)
                model = build()
        except Exception as e:  # a model that cannot be built is listed, not fatal
            failures.append((lib, name, f"not built: {type(e).__name__}: {e}"[:300]))
            continue
        try:
            size = sum(p.numel() for p in model.parameters())
            report, problems, variants, found = sweep_one(model)
        except Exception as e:
            failures.append((lib, name, f"convert / unconvert raised {type(e).__name__}: {e}"[:300]))
            continue
        built += 1
        for pair in variants:
            pairs[pair].append((size, lib, name))
        for cls in found:
            candidates[cls] += 1
            candidate_example.setdefault(cls, f"{lib} {name}")
        for p in problems:
            failures.append((lib, name, p))
        if report.total:
            with_swaps += 1
        for (src, _), n in report.swapped.items():
            swapped[src] += n
            models_per_class[src] += 1
        for s in report.skipped:
            key = (s.cls, s.reason)
            skipped[key] += 1
            example.setdefault(key, f"{lib} {name}")
    elapsed = time.time() - t0

    lines = [f"# fused_attn.convert over timm {timm.__version__} and torchvision {torchvision.__version__}",
             "",
             f"`python tools/convert_sweep.py --md <this file> --check` (torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}, {elapsed:.0f} s): every architecture built on the meta device, "
             "converted and converted back. Checked on each: no exception, the report's count equals the "
             "modules of the classes convert knows less those left, state_dict keys unchanged both ways, "
             "the original classes restored. No numbers (meta tensors).",
             "",
             f"{built} models built; {with_swaps} have attention blocks swapped; "
             f"{sum(swapped.values())} blocks in all; {len(failures)} failures."
             + (f" Built on the CPU, as their constructors read weights: {', '.join(on_cpu)}." if on_cpu else ""),
             "",
             "| swapped class | blocks | models |", "|---|---:|---:|"]
    lines += [f"| `{c}` | {n} | {models_per_class[c]} |" for c, n in swapped.most_common()]
    lines += ["", "Left unconverted (listed in the report):", "",
              "| class | blocks | a model with it | reason |", "|---|---:|---|---|"]
    lines += [f"| `{c}` | {n} | {example[(c, r)]} | {r.replace('|', '/')} |"
              for (c, r), n in skipped.most_common()]
    tested = _numerically_tested()
    lines += ["", "Each class swapped, with each variant of its forward (activation, gate, pooling, norm, "
              "padding, bias) found among the models, and the models of each that tests/test_convert.py runs "
              "with real weights against the unconverted one (MODELS, VARIANT_MODELS); for an untested pair, "
              "the smallest model that has it:", "",
              "| class | variant | models | tested by |", "|---|---|---:|---|"]
    uncovered = 0
    for (cls, v), models in sorted(pairs.items()):
        by = [f"{lib} {name}" for _, lib, name in sorted(models) if (lib, name) in tested]
        if not by:
            uncovered += 1
        smallest = min(models)
        cell = ", ".join(f"`{b}`" for b in by) if by else f"**not tested**: smallest `{smallest[1]} {smallest[2]}`"
        lines.append(f"| `{cls}` | {v} | {len(models)} | {cell} |")
    lines += ["", f"{len(pairs) - uncovered} of {len(pairs)} (class, variant) pairs tested numerically."]
    lines += ["", "Neither swapped nor reported, yet a gate over a projection (a 1x1 conv or Linear child and a "
              "child named like a sigmoid or gate): blocks the class list and the lookalike names miss, to look "
              "at by hand (not a failure):", "", "| class | modules | a model with it |", "|---|---:|---|"]
    lines += [f"| `{c}` | {n} | {candidate_example[c]} |" for c, n in candidates.most_common()]
    if failures:
        lines += ["", "Failures:", ""] + [f"* {lib} {name}: {p}" for lib, name, p in failures]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    if args.check and any(not p.startswith("not built") for _, _, p in failures):
        sys.exit(1)


def _numerically_tested():
    """The models tests/test_convert.py converts and compares with real weights, by the names used here."""
    from tests import test_convert
    # (lib, name) as _builders yields them; MODELS marks torchvision's with "tv_".
    return ({("timm", k) for k in test_convert.VARIANT_MODELS}
            | {("torchvision", k[3:]) if k.startswith("tv_") else ("timm", k) for k in test_convert.MODELS})


if __name__ == "__main__":
    main()
