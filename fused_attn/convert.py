"""``fused_attn.convert(model)``: swap the attention blocks of an existing model
for fused ones, in place, and say what was done.

    model, report = fused_attn.convert(model)
    print(report)

Every module that is exactly representable is replaced by a fused module that
shares its parameters and buffers under the *same attribute names* (so
``state_dict()`` keys and checkpoints are unchanged in both directions) and
keeps its train/eval mode; device, dtype and memory format are the
parameters' own, untouched. Modules that look like attention blocks but
cannot be represented exactly (an unsupported activation, a block type not
fused yet) are left alone and listed in the report with the reason.
``unconvert`` puts the original modules back.
"""
import collections
import copy
import dataclasses
import fnmatch
import re
from collections.abc import Iterable
from typing import Any, Callable, Optional, Union

from torch import nn

from .nn.cbam import CBAM
from .nn.eca import EfficientChannelAttention
from .nn.se import SqueezeExcite

# Kinds, named as timm's create_attn names them (plus the module families).
_SE_KINDS = {"se", "ese"}
_ECA_KINDS = {"eca", "ceca"}
KINDS = ("se", "ese", "eca", "ceca", "cbam", "lcbam")
#: What ``include`` / ``exclude`` take: a kind or a path pattern (fnmatch), a
#: list of them, or a callable ``(path, kind) -> bool``.
Selector = Union[str, Iterable[str], Callable[[str, str], object]]   # the callable's result: truthy or not

# Class names of attention modules fused_attn does not fuse (yet), with the reason.
_NOT_YET = {
    "ChannelAttn": "CBAM's channel attention on its own (mean and max through the MLP) is not fused; its "
                   "CbamModule is",
    "LightChannelAttn": "light CBAM's channel attention on its own is not fused; its LightCbamModule is",
}
_FUSED = (SqueezeExcite, EfficientChannelAttention, CBAM)
# Names that suggest an attention block: a module whose class name matches and
# that is not converted is reported as a lookalike, with the reason.
_LOOKALIKE = re.compile(r"(?i:squeeze(?!net)|excit|eca|cbam|channel_?att|spatial_?att|channel_?gate|spatial_?gate)"
                        r"|(?-i:(^|[a-z])SE(Module|Layer|Block)?$|^se_?(module|layer|block)$)")

# Children of query-key-value attention (davit's ChannelAttention, a
# transformer block over channels): a lookalike by name only, not reported.
_DOT_PRODUCT = {"qkv", "q", "kv"}


@dataclasses.dataclass
class Skipped:
    path: str
    cls: str
    reason: str


@dataclasses.dataclass
class ConvertReport:
    """What ``convert`` / ``unconvert`` did: counts per (original class →
    fused class), the paths converted, and the lookalikes left alone."""

    swapped: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    paths: list[str] = dataclasses.field(default_factory=list)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    already: int = 0

    @property
    def total(self) -> int:
        return sum(self.swapped.values())

    def __str__(self) -> str:
        lines = [f"fused_attn.convert: {self.total} module(s) swapped"
                 + (f", {self.already} already fused" if self.already else "")]
        for (src, dst), n in sorted(self.swapped.items()):
            lines.append(f"  {n:3d} × {src} -> {dst}")
        if self.skipped:
            lines.append(f"  {len(self.skipped)} left unconverted:")
            for s in self.skipped:
                lines.append(f"    {s.path or '<root>'} ({s.cls}): {s.reason}")
        return "\n".join(lines)


def _qualname(m):
    return f"{type(m).__module__}.{type(m).__qualname__}"


def _kind(m, fused):
    """The create_attn-style kind of a fused module: se / ese / eca / ceca / cbam / lcbam."""
    if isinstance(fused, CBAM):
        return "lcbam" if fused.light else "cbam"
    if isinstance(fused, SqueezeExcite):
        return "ese" if fused.effective else "se"
    return "ceca" if fused.padding == "circular" else "eca"


def _try_fuse(m):
    """(fused module, None) or (None, reason); (None, None) when m is not an attention block at all."""
    name = type(m).__name__
    if name in _NOT_YET:
        return None, _NOT_YET[name]
    errors = []
    for cls in (CBAM, SqueezeExcite, EfficientChannelAttention):
        try:
            fused = cls.from_module(m)
        except TypeError as e:    # not this family: its children do not match
            errors.append(("type", str(e)))
        except ValueError as e:   # this family, but something it cannot represent exactly
            return None, str(e)
        else:
            # Refuse structural matches whose forward might do something else
            # (a subclass or an unknown class with the same children): only
            # known classes and our own convert silently; others are reported.
            return fused, None
    # A known class always says why it was left (a wrapped conv, say);
    # others when their name suggests an attention block.
    lookalike = _LOOKALIKE.search(name) and not _DOT_PRODUCT.intersection(dict(m.named_children()))
    if lookalike or _known_attention_class(m):
        return None, "not a layout fused_attn recognises (" + "; ".join(msg for _, msg in errors) + ")"
    return None, None


def _selected(path, kind, include, exclude):
    def matches(spec):
        if callable(spec):
            return spec(path, kind)
        if isinstance(spec, str):   # one kind or pattern (iterating it would match single characters)
            spec = (spec,)
        return any(s == kind or fnmatch.fnmatchcase(path, s) for s in spec)

    if include is not None and not matches(include):
        return False
    if exclude is not None and matches(exclude):
        return False
    return True


def _known_attention_class(m):
    """Classes whose forward is known to be the one from_module assumes."""
    q = _qualname(m)
    known = (
        "timm.layers.squeeze_excite.SEModule", "timm.layers.squeeze_excite.EffectiveSEModule",
        "timm.models._efficientnet_blocks.SqueezeExcite", "timm.models.senet.SEModule",
        "torchvision.ops.misc.SqueezeExcitation", "timm.layers.eca.EcaModule", "timm.layers.eca.CecaModule",
        "timm.layers.cbam.CbamModule", "timm.layers.cbam.LightCbamModule", "timm.models.hgnet.EseModule",
    )
    # The official ECA and CBAM code is copied into projects, not installed:
    # known by class name (and, for CBAM, its ChannelGate / SpatialGate parts).
    official_cbam = type(m).__name__ == "CBAM" and {"ChannelGate", "SpatialGate"} <= set(dict(m.named_children()))
    return q in known or type(m).__name__ == "eca_layer" or official_cbam


def _set_child(model, path, new):
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


# The model comes back typed Any: it is the caller's own class (a ResNet stays
# one), except where the root itself was an attention block and comes back
# fused, so neither nn.Module (which would lose the caller's type) nor a type
# variable (which would be wrong in that case) says what it is.
def convert(model: nn.Module, *, inplace: bool = True, include: Optional[Selector] = None,
            exclude: Optional[Selector] = None, strict_classes: bool = True) -> tuple[Any, ConvertReport]:
    """Replace every SE / ECA / CBAM block of ``model`` that fused_attn represents
    exactly with its fused module. Returns ``(model, report)``.

    Args:
        model: any ``nn.Module`` (a root that is itself an attention block is
            converted too and returned).
        inplace: convert ``model`` itself (default) or a deep copy.
        include / exclude: which blocks to touch: a kind ("se", "ese", "eca",
            "ceca", "cbam", "lcbam") or an ``fnmatch`` pattern on the module's
            path ("layer4.*"), an iterable of them, or a callable
            ``(path, kind) -> bool``.
        strict_classes: only convert the classes whose forward is known
            (timm, torchvision, the official ECA layer); a module of another
            class with the same layout is reported, not converted. Set False
            to convert by layout alone.

    Converting twice is a no-op (the report counts the fused modules as
    ``already``); ``unconvert`` reverses it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = ConvertReport()
    done: set[str] = set()   # paths already handled: nothing inside a converted block is visited
    root_replacement = None
    for path, m in list(model.named_modules()):
        if any(path.startswith(p + ".") for p in done):
            continue
        if isinstance(m, _FUSED):
            report.already += 1
            done.add(path)
            continue
        fused, reason = _try_fuse(m)
        if fused is None:
            if reason is not None:   # a lookalike: report it, and not its parts again
                report.skipped.append(Skipped(path, _qualname(m), reason))
                done.add(path)
            continue
        kind = _kind(m, fused)
        if not _selected(path, kind, include, exclude):
            continue
        if strict_classes and not _known_attention_class(m):
            report.skipped.append(Skipped(path, _qualname(m), "same layout as a known attention block but an "
                                          "unknown class (its forward may differ); convert(strict_classes=False) "
                                          "converts it by layout"))
            done.add(path)
            continue
        object.__setattr__(fused, "_fused_attn_original", m)   # not a submodule: for unconvert
        if path:
            _set_child(model, path, fused)
        else:
            root_replacement = fused
        done.add(path)
        report.swapped[(_qualname(m), f"fused_attn.nn.{type(fused).__name__}")] += 1
        report.paths.append(path)
    return (root_replacement if root_replacement is not None else model), report


def unconvert(model: nn.Module, *, inplace: bool = True) -> tuple[Any, ConvertReport]:
    """Put back the original modules ``convert`` replaced (they share the
    fused modules' parameters, so training since the conversion is kept).
    Returns ``(model, report)``."""
    if not inplace:
        model = copy.deepcopy(model)
    report = ConvertReport()
    root = model
    for path, m in list(model.named_modules()):
        original = getattr(m, "_fused_attn_original", None)
        if original is None:
            continue
        original.train(m.training)
        if path:
            _set_child(model, path, original)
        else:
            root = original
        report.swapped[(type(m).__name__, _qualname(original))] += 1
        report.paths.append(path)
    return root, report
