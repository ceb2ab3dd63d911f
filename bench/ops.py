"""Microbenchmark of the channel-attention ops: every fused backend vs eager
timm vs ``torch.compile`` vs a copy of x.

    python -m bench.ops                  # --quick: ResNet-50 sites, every op, both layouts, fwd and fwd+bwd;
                                         #   CPU: N=8, fp32; GPU: N=128 (and N=1 at the smallest site), fp32, bf16
    python -m bench.ops --full           # the whole grid (long: hours on a GPU with every compile mode)
    python -m bench.ops --smoke          # a tiny grid, briefly timed: checks the code runs (the tests use it)
    python -m bench.ops --op se --device cpu --compile none --no-save
    python -m bench.ops --device cpu --dtype bfloat16   # the quick grid in bf16 instead

Per row (an op at a site, batch N, dtype, layout, pass), the median time with
quartiles of each provider:

* ``copy``     — ``out.copy_(x)``: x read once, y written once, the memory
  floor of any out-of-place op over x (2|x| bytes),
* ``eager``    — the timm module (``SEModule``, ``EcaModule``) in eager PyTorch,
* ``compile``  — ``torch.compile`` of that module (default mode, specialized to
  the shape, as inside a compiled network); ``--compile`` adds modes
  (``compile:max-autotune``, ``compile:reduce-overhead``; on a GPU ``--full``
  runs all three; the CUDA-graph modes copy each fresh x into the graph's
  static input, as they would at a network's input but not inside it),
* one per fused backend that can run on the device (``fused_attn.backends()``:
  ``cpu`` on a CPU, ``cuda`` and ``triton`` on a GPU): the fused module
  ``from_module(timm module)`` run inside ``fused_attn.use_backend(name)``
  (SE and ECA on a GPU also get ``cuda:two_phase``: the CUDA backend with
  its two-phase path forced, beside ``cuda``'s choice, usually the single
  launch),
* on a GPU at N=1, forward: ``<backend>:graph`` — that fused forward captured
  in a CUDA graph and replayed, the device time of its kernels without the
  host's per-call overhead (Python, dispatch, launch: tens of µs, more than
  the kernels take at N=1). Reported beside the others, left out of the
  ratios (the eager providers pay that overhead),

for the forward (under no_grad, modules in eval mode) and forward+backward
(train mode; dx and every weight gradient through ``torch.autograd.grad`` with
a random dy). Beside the times: effective GB/s on the floor bytes (the
project's byte model: forward 2|x|, read x and write y; forward+backward
5|x|, adding read dy and x, write dx), that as a % of the copy's
bandwidth, the best fused backend's speedup over eager and over the best
compiled mode, and each provider's error against the float64 reference
(``fused_attn.reference``): max |y - ref| forward; max |dx - ref| and the
largest weight-gradient error relative to that gradient's max for
forward+backward.

Timing: a warm-up (compilation; its time is recorded as ``first_call_s``),
then rounds in which the providers take turns (CPU: bursts of wall-clock
timed calls; GPU: CUDA events around each call), medians and quartiles of all
calls. Inputs rotate through copies (CPU: at least 1 GiB and twice the
last-level cache; GPU: 4× the L2) so large shapes are not cache-warm.

Results: a table on stdout as rows are measured (progress on stderr) and, row
by row, bench/results/<device>/ops_<mode>.{json,md} (ops_<mode>_<ops>.* when
--op picks a subset), then a plot, ops_<mode>.png.

Adding an op: one ``Op`` entry in ``OPS`` (see ``Op``).
"""
import contextlib
import dataclasses
import gc
import math
import os
import sys
import time
from typing import Callable

import torch
from torch import nn

import fused_attn

from . import common

# --- The registry -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Site:
    """One place an op sits in a network: C×H×W and the op's own settings
    (``kw``: SE's rd / act / gate, ECA's k, ...) as (name, value) pairs."""
    net: str
    C: int
    H: int
    W: int
    kw: tuple = ()

    @property
    def args(self):
        return dict(self.kw)


def site(net, C, H, W=None, **kw):
    return Site(net, C, H, H if W is None else W, tuple(kw.items()))


def floor_bytes(x_bytes, backward):
    """The byte model: a forward that reads x once and writes y once moves 2|x|;
    forward+backward 5|x| (2|x| forward, 3|x| backward: read dy and x, write dx)."""
    return 5 * x_bytes if backward else 2 * x_bytes


@dataclasses.dataclass(frozen=True)
class Op:
    """What the benchmark needs to know about one op.

    name       --op name, and the "op" of each result row.
    title      a line for tables and plots.
    sites      the --full grid of Sites; --quick takes those with net in QUICK_NETS.
    smoke      one tiny Site for --smoke.
    eager      eager(site) -> nn.Module: the reference module (timm's), freshly
               initialised in float32 on the CPU; the runner seeds the RNG,
               moves it to the device / dtype and sets train (fwd+bwd) or eval (fwd).
    fused      fused(module) -> nn.Module: the fused module sharing ``module``'s
               parameters (``fused_attn.nn.X.from_module``); the runner picks the
               backend with ``fused_attn.use_backend``.
    reference  reference(site, module, x, params) -> y: the float64 oracle
               (``fused_attn.reference``). ``x`` and ``params`` ({name: tensor}
               keyed as ``module.named_parameters()``) are float64 leaves,
               requiring grad on the fwd+bwd pass: the gradient errors come
               from autograd through it. ``module`` is the eager module as
               run (its buffers, e.g. BatchNorm running statistics, and
               ``module.training``); take parameters from ``params``, not it.
    floor      floor(x_bytes, backward) -> bytes the ideal kernel moves
               (the effective GB/s are these bytes over the time).
    describe   describe(site) -> a short text of the site's settings for tables.
    """
    name: str
    title: str
    sites: tuple
    smoke: Site
    eager: Callable
    fused: Callable
    reference: Callable
    floor: Callable = floor_bytes
    describe: Callable = lambda s: " ".join(f"{k}={v}" for k, v in s.kw)


# (C, H, rd, act, gate): SE as it sits in the networks people train.
SE_SITES = (
    [site("resnet50", C, H, rd=C // 16, act="relu", gate="sigmoid") for C, H in ((256, 56), (512, 28), (1024, 14),
                                                                                 (2048, 7))]
    + [site("efficientnet_b0", C, H, rd=rd, act="silu", gate="sigmoid")
       for C, H, rd in ((32, 112, 8), (96, 56, 4), (144, 56, 6), (240, 28, 10), (480, 14, 20), (672, 14, 28),
                        (1152, 7, 48))]
    + [site("mobilenetv3_large", C, H, rd=rd, act="relu", gate="hard_sigmoid")
       for C, H, rd in ((72, 28, 24), (120, 28, 32), (480, 14, 120), (672, 14, 168), (960, 7, 240))]
    + [site("edge", C, H, W, rd=C // 16, act="relu", gate="sigmoid")
       for C, H, W in ((64, 112, 112), (256, 200, 304), (1001, 14, 14))])

# ECA-ResNet-50 (k = 5, 5, 5, 7: timm's rule from C) and the edge shapes (k from C likewise).
ECA_SITES = (
    [site("resnet50", C, H, k=k) for C, H, k in ((256, 56, 5), (512, 28, 5), (1024, 14, 5), (2048, 7, 7))]
    + [site("edge", C, H, W, k=fused_attn.reference.eca_kernel_size(C))
       for C, H, W in ((64, 112, 112), (256, 200, 304), (1001, 14, 14))])

# CBAM on the ResNet-50 sites (r = 16, 7×7 spatial kernel) and the edge shapes.
CBAM_SITES = (
    [site("resnet50", C, H, rd=C // 16, k=7) for C, H in ((256, 56), (512, 28), (1024, 14), (2048, 7))]
    + [site("edge", C, H, W, rd=C // 16, k=7) for C, H, W in ((64, 112, 112), (256, 200, 304), (1001, 14, 14))])

_ACT_LAYERS = {"relu": nn.ReLU, "silu": nn.SiLU}


def _se_eager(s):
    from timm.layers import SEModule
    a = s.args
    return SEModule(s.C, rd_channels=a["rd"], act_layer=_ACT_LAYERS[a["act"]], gate_layer=a["gate"])


def _se_reference(s, module, x, p):
    a = s.args
    return fused_attn.reference.squeeze_excitation(x, p["fc1.weight"], p["fc1.bias"], p["fc2.weight"], p["fc2.bias"],
                                                   act=a["act"], gate=a["gate"])


def _eca_eager(s):
    from timm.layers import EcaModule
    return EcaModule(kernel_size=s.args["k"])


def _eca_reference(s, module, x, p):
    return fused_attn.reference.efficient_channel_attention(x, p["conv.weight"])


def _cbam_eager(s):
    from timm.layers.cbam import CbamModule
    return CbamModule(s.C, rd_channels=s.args["rd"], spatial_kernel_size=s.args["k"])


def _cbam_reference(s, module, x, p):
    bn = module.spatial.conv.bn
    return fused_attn.reference.cbam(
        x, p["channel.fc1.weight"], None, p["channel.fc2.weight"], None, p["spatial.conv.conv.weight"],
        bn_weight=p["spatial.conv.bn.weight"], bn_bias=p["spatial.conv.bn.bias"],
        bn_running_mean=bn.running_mean.detach().double().clone(),
        bn_running_var=bn.running_var.detach().double().clone(), bn_training=module.training, bn_eps=bn.eps)


OPS = {op.name: op for op in [
    Op(name="se", title="Squeeze-and-Excitation (timm SEModule)", sites=tuple(SE_SITES),
       smoke=site("smoke", 32, 6, 5, rd=8, act="silu", gate="hard_sigmoid"),
       eager=_se_eager, fused=lambda m: fused_attn.nn.SqueezeExcite.from_module(m), reference=_se_reference,
       describe=lambda s: f"rd={s.args['rd']} {s.args['act']}/{s.args['gate']}"),
    Op(name="eca", title="Efficient Channel Attention (timm EcaModule)", sites=tuple(ECA_SITES),
       smoke=site("smoke", 24, 5, 6, k=3),
       eager=_eca_eager, fused=lambda m: fused_attn.nn.EfficientChannelAttention.from_module(m),
       reference=_eca_reference, describe=lambda s: f"k={s.args['k']}"),
    Op(name="cbam", title="CBAM (timm CbamModule)", sites=tuple(CBAM_SITES),
       smoke=site("smoke", 16, 6, 5, rd=4, k=3),
       eager=_cbam_eager, fused=lambda m: fused_attn.nn.CBAM.from_module(m), reference=_cbam_reference,
       describe=lambda s: f"rd={s.args['rd']} k={s.args['k']}"),
]}

# --- The grid -------------------------------------------------------------------

QUICK_NETS = ("resnet50",)
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# How long each provider is timed, per device and mode.
TIMING = {
    "cpu": {"smoke": dict(rounds=1, min_reps=2, min_seconds=0.0),
            "quick": dict(rounds=5, min_reps=3, min_seconds=0.05),
            "full": dict(rounds=7, min_reps=5, min_seconds=0.15)},
    "cuda": {"smoke": dict(rounds=1, reps=3),
             "quick": dict(rounds=5, reps=20),
             "full": dict(rounds=7, reps=30)},
}
CPU_ROTATE_BYTES = 1 << 30  # and at least 2× the last-level cache
GPU_ROTATE_L2 = 4           # × the L2


@dataclasses.dataclass(frozen=True)
class Case:
    op: Op
    site: Site
    N: int
    dtype: str
    layout: str
    backward: bool
    compile: bool = True  # time the torch.compile providers (--smoke: on one row only)

    @property
    def pass_name(self):
        return "fwd+bwd" if self.backward else "fwd"

    @property
    def shape(self):
        return (self.N, self.site.C, self.site.H, self.site.W)


def cases(ops, mode, device, only_dtypes=None):
    """Every row to measure, op by op, then pass, dtype, layout, N, site
    (only_dtypes: these dtypes instead of the mode's)."""
    out = []
    for op in ops:
        if mode == "smoke":
            # Two rows per op, and torch.compile (1-4 s a shape on a CPU) on
            # the first op's forward+backward only: --smoke checks the code runs.
            dtype = (only_dtypes or ["float32"])[0]
            out += [Case(op, op.smoke, 2, dtype, "nchw", False, compile=False),
                    Case(op, op.smoke, 2, dtype, "channels_last", True, compile=op is ops[0])]
            continue
        if mode == "full":
            sites = list(op.sites)
            batches = (1, 32, 128) if device == "cuda" else (1, 8)
            dtypes = ("float32", "bfloat16", "float16") if device == "cuda" else ("float32", "bfloat16")
        else:
            # GPU: the bandwidth-bound batch only (plus N=1 below), so that the
            # run, a torch.compile per row included, fits in minutes.
            sites = [s for s in op.sites if s.net in QUICK_NETS]
            batches = (128,) if device == "cuda" else (8,)
            dtypes = ("float32", "bfloat16") if device == "cuda" else ("float32",)
        dtypes = only_dtypes or dtypes
        for backward in (False, True):
            for dtype in dtypes:
                for layout in LAYOUTS:
                    for N in batches:
                        out += [Case(op, s, N, dtype, layout, backward) for s in sites]
                    if mode == "quick" and device == "cuda" and sites:
                        # The launch-bound end: one sample at the smallest site.
                        out.append(Case(op, min(sites, key=lambda s: s.H * s.W), 1, dtype, layout, backward))
    return out


# --- Running one row ----------------------------------------------------------


def fused_backends(device):
    """Every fused backend that runs on `device` (never the Triton interpreter
    on a CPU: that is for tests, not timing; never the eager reference)."""
    names = []
    for name, status in fused_attn.backends().items():
        if name == "reference" or device not in status.devices or (device == "cpu" and name == "triton"):
            continue
        names.append(name)
    return names


# SE and ECA on the CUDA backend have two paths (csrc/cuda/channel_gate.h):
# "cuda" is what it picks by shape, "cuda:two_phase" the pool / excite /
# rescale passes forced, so each row shows what the single launch buys.
CUDA_PATHS = {"cuda:two_phase": "two_phase"}
CUDA_PATH_OPS = ("se", "eca")


@contextlib.contextmanager
def backend_context(name):
    """fused_attn.use_backend(name), where a name "cuda:<path>" also forces
    that CUDA path (FUSED_ATTN_CUDA_PATH) for the duration."""
    base, _, _ = name.partition(":")
    path = CUDA_PATHS.get(name)
    old = os.environ.get("FUSED_ATTN_CUDA_PATH")
    if path is not None:
        os.environ["FUSED_ATTN_CUDA_PATH"] = path
    try:
        with fused_attn.use_backend(base):
            yield
    finally:
        if path is not None:
            if old is None:
                os.environ.pop("FUSED_ATTN_CUDA_PATH", None)
            else:
                os.environ["FUSED_ATTN_CUDA_PATH"] = old


def compile_provider(mode):
    return "compile" if mode == "default" else f"compile:{mode}"


def _rotation(case, device, x_bytes, env, rotate):
    """How many copies of the inputs to rotate through, so that each call finds
    its x (and dy) out of cache (rotate=False: the minimum, for --smoke)."""
    if not rotate:
        return 2 if device == "cuda" else 3
    per_step = x_bytes * (2 if case.backward else 1)
    if device == "cuda":
        target = GPU_ROTATE_L2 * (env.get("l2_bytes") or (50 << 20))
        return max(2, math.ceil(target / per_step))
    target = max(CPU_ROTATE_BYTES, 2 * (env.get("llc_bytes") or 0))
    return max(3, math.ceil(target / per_step))


def _fits_on_gpu(case, x_bytes, n_inputs):
    """Rough peak: the rotated x (and dy) and copy outputs, and the outputs,
    gradients and temporaries of one eager call."""
    need = x_bytes * (n_inputs * (3 if case.backward else 2) + (5 if case.backward else 2))
    free, _ = torch.cuda.mem_get_info()
    return need < 0.9 * free


def _reference_fits(case, device):
    """Whether the float64 reference (x, y, and for fwd+bwd dy, dx and
    autograd's temporaries, all in float64) fits beside the inputs."""
    if device != "cuda":
        return True
    need = math.prod(case.shape) * 8 * (8 if case.backward else 3)
    free, _ = torch.cuda.mem_get_info()
    return need < 0.5 * free


# Rotated inputs live in slabs kept from row to row: on a CPU, faulting in a
# fresh GiB of pages costs seconds per row (more than the timing itself).
_SLABS = {}
_ALIGN = 4096


def rotated_copies(role, value, memory_format, n, like=None):
    """n tensors shaped like `value` (or `like`) in `memory_format`, each at its
    own page-aligned place in the slab for `role`, filled with `value` (left
    as they are when value is None). Plain tensors (not views): they can be
    made leaves that require grad."""
    ref = value if value is not None else like
    stride = torch.empty(ref.shape, device="meta").contiguous(memory_format=memory_format).stride()
    item = ref.element_size()
    slot = -(-ref.numel() * item // _ALIGN) * _ALIGN
    slab = _SLABS.get((ref.device, role))
    if slab is None or slab.numel() < n * slot + _ALIGN:
        _SLABS.pop((ref.device, role), None)
        slab = torch.zeros(n * slot + _ALIGN, dtype=torch.uint8, device=ref.device)  # zeros: touch every page
        _SLABS[(ref.device, role)] = slab
    base = -slab.data_ptr() % _ALIGN
    out = []
    for i in range(n):
        t = torch.empty(0, dtype=ref.dtype, device=ref.device)
        t.set_(slab.untyped_storage(), (base + i * slot) // item, ref.shape, stride)
        if value is not None:
            t.copy_(value)
        out.append(t)
    return out


def release_slabs():
    _SLABS.clear()


def _step(module, backend, backward, xs, dys, params, mark_step):
    """fn(i): one forward (no_grad) or forward+backward on input i, returning
    y (and the gradients) for the error check."""
    backend_ctx = (lambda: backend_context(backend)) if backend else contextlib.nullcontext
    if not backward:
        def run(i):
            with torch.no_grad(), backend_ctx():
                if mark_step:
                    torch.compiler.cudagraph_mark_step_begin()
                return module(xs[i])
    else:
        def run(i):
            with backend_ctx():
                if mark_step:
                    torch.compiler.cudagraph_mark_step_begin()
                y = module(xs[i])
                return y, torch.autograd.grad(y, [xs[i]] + params, dys[i])
    return run


def _graphed(module, backend, xs):
    """fn(i): replays a CUDA graph of the fused forward (no_grad) on input i,
    captured at its first call: the device time of the op's kernels without
    the host's per-call overhead (Python, dispatch, launch), which at N=1
    exceeds the kernels' own time. As inside a CUDA-graphed network; not
    comparable with the eager providers, so not a 'fused' backend in the ratios."""
    graphs = {}

    def run(i):
        if i not in graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad(), backend_context(backend):
                for _ in range(2):
                    module(xs[i])   # warm-up outside the capture (allocator, caches)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), backend_context(backend), torch.cuda.graph(graph):
                out = module(xs[i])
            graphs[i] = (graph, out)
        graph, out = graphs[i]
        graph.replay()
        return out
    return run


def _errors(out, ref, backward, param_names):
    """max |y - ref| (fwd); max |dx - ref|, and the largest weight-gradient
    error relative to that gradient's largest magnitude (fwd+bwd)."""
    if not backward:
        return {"out": (out.double() - ref).abs().max().item()}
    (y, grads), (y_ref, grads_ref) = out, ref
    err = {"out": (y.double() - y_ref).abs().max().item(),
           "dx": (grads[0].double() - grads_ref[0]).abs().max().item()}
    rel = {}
    for name, g, g_ref in zip(param_names, grads[1:], grads_ref[1:], strict=True):
        rel[name] = ((g.double() - g_ref).abs().max() / g_ref.abs().max().clamp_min(1e-30)).item()
    err["dweight_rel"] = max(rel.values()) if rel else 0.0
    return err


def run_case(case, device, env, compile_modes, timing, rotate=True):
    """Measure one row: {case fields, providers: {name: stats}, errors, ratios}."""
    op, s = case.op, case.site
    dtype, fmt = DTYPES[case.dtype], LAYOUTS[case.layout]
    x_bytes = math.prod(case.shape) * torch.finfo(dtype).bits // 8
    row = {"op": op.name, "net": s.net, "pass": case.pass_name, "N": case.N, "C": s.C, "H": s.H, "W": s.W,
           "args": s.args, "dtype": case.dtype, "layout": case.layout, "x_bytes": x_bytes,
           "floor_bytes": op.floor(x_bytes, case.backward)}
    n_inputs = _rotation(case, device, x_bytes, env, rotate)
    if device == "cuda" and not _fits_on_gpu(case, x_bytes, n_inputs):
        n_inputs = 2
        if not _fits_on_gpu(case, x_bytes, n_inputs):
            row["skipped"] = f"needs more than the free GPU memory (|x| = {x_bytes / 2**30:.2f} GiB)"
            return row
    row["inputs_rotated"] = n_inputs

    torch._dynamo.reset()  # drop earlier rows' compiled code (and their guards)
    torch.manual_seed(0)
    module = op.eager(s).to(device=device, dtype=dtype).train(case.backward)
    fused = op.fused(module)
    params = [p for _, p in module.named_parameters()]
    param_names = [n for n, _ in module.named_parameters()]

    xs = rotated_copies("x", torch.randn(case.shape, device=device).to(dtype), fmt, n_inputs)
    outs = rotated_copies("out", None, fmt, n_inputs, like=xs[0])
    dys = None
    if case.backward:
        dys = rotated_copies("dy", torch.randn(case.shape, device=device).to(dtype), fmt, n_inputs)
        for x in xs:
            x.requires_grad_()

    def copy(i):
        with torch.no_grad():
            outs[i].copy_(xs[i])

    impls = {"eager": (module, None, False)}
    for mode in compile_modes if case.compile else []:
        compiled = torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)
        # reduce-overhead and max-autotune replay CUDA graphs: each call is a new step.
        impls[compile_provider(mode)] = (compiled, None, device == "cuda")
    backends = fused_backends(device)
    if op.name in CUDA_PATH_OPS and "cuda" in backends:
        backends += list(CUDA_PATHS)
    impls.update({b: (fused, b, False) for b in backends})
    providers = {"copy": copy}
    providers.update({name: _step(m, b, case.backward, xs, dys, params, mark) for name, (m, b, mark) in impls.items()})
    if device == "cuda" and case.N == 1 and not case.backward:
        # The launch-bound end: also the fused forward's device time alone.
        providers.update({f"{b}:graph": _graphed(fused, b, xs) for b in backends})

    # The float64 reference, with autograd for the gradients (left out, and
    # said so, where it would not fit in GPU memory).
    ref = None
    if _reference_fits(case, device):
        x64 = xs[0].detach().double().requires_grad_(case.backward)
        p64 = {n: p.detach().double().requires_grad_(case.backward) for n, p in module.named_parameters()}
        y64 = op.reference(s, module, x64, p64)
        if case.backward:
            ref = (y64.detach(), [g.detach() for g in torch.autograd.grad(y64, [x64] + list(p64.values()),
                                                                          dys[0].double())])
        else:
            ref = y64.detach()
        del x64, p64, y64
    else:
        row["errors_skipped"] = "the float64 reference would not fit in GPU memory"

    # Warm-up (compilation, autotuning, the allocator), and each provider's
    # error; a provider that fails is reported and left out, not fatal.
    first_call, errors, failed = {}, {}, {}
    for name, fn in list(providers.items()):
        try:
            t0 = time.perf_counter()
            out = fn(0)
            if device == "cuda":
                torch.cuda.synchronize()
            first_call[name] = time.perf_counter() - t0
            if name != "copy" and ref is not None:
                errors[name] = _errors(out, ref, case.backward, param_names)
            del out
            # (graph replays capture each input's graph here, not while timed)
            for i in range(1, n_inputs if name.endswith(":graph") else min(3, n_inputs)):
                fn(i)
        except Exception as e:  # noqa: BLE001 - a broken provider must not end a long run
            failed[name] = f"{type(e).__name__}: {e}"[:500]
            del providers[name]
            print(f"# {op.name} {case.pass_name} {case.shape}: {name} failed: {failed[name][:200]}", file=sys.stderr)
    if "copy" not in providers:
        raise RuntimeError(f"the copy failed: {failed['copy']}")

    if device == "cuda":
        stats = common.measure_cuda(providers, n_inputs, **timing)
    else:
        stats = common.measure_cpu(providers, n_inputs, **timing)

    copy_gbps = 2 * x_bytes / (stats["copy"]["median_ms"] * 1e-3) / 1e9
    for name, st in stats.items():
        moved = 2 * x_bytes if name == "copy" else row["floor_bytes"]
        st["gbps"] = moved / (st["median_ms"] * 1e-3) / 1e9
        st["pct_copy_bw"] = 100 * st["gbps"] / copy_gbps
        st["first_call_s"] = first_call[name]
    row.update(providers=stats, errors=errors, fused=[b for b in backends if b in stats])
    if failed:
        row["failed"] = failed
    _ratios(row)

    return row


def _ratios(row):
    """The best fused backend's speedups over eager and the best compiled mode."""
    p = row["providers"]
    best = min(row["fused"], key=lambda b: p[b]["median_ms"], default=None)
    compiled = [n for n in p if n.startswith("compile")]
    best_compile = min(compiled, key=lambda n: p[n]["median_ms"], default=None)
    row["best_fused"], row["best_compile"] = best, best_compile
    if best is None:
        return
    t = p[best]["median_ms"]
    row["fused_pct_copy_bw"] = p[best]["pct_copy_bw"]
    row["fused_vs_copy_floor"] = t / (p["copy"]["median_ms"] * row["floor_bytes"] / (2 * row["x_bytes"]))
    if "eager" in p:
        row["speedup_vs_eager"] = p["eager"]["median_ms"] / t
    if best_compile:
        row["speedup_vs_compile"] = p[best_compile]["median_ms"] / t


# --- Reporting ------------------------------------------------------------------


def shape_text(r):
    return f"{r['N']}×{r['C']}×{r['H']}×{r['W']}"


def _ms(t):
    return f"{t:.4g}"


def _ratio(r, key):
    return f"{r[key]:.2f}×" if key in r else "—"


def _max_err(r, name):
    e = r.get("errors", {}).get(name)
    return max(e.values()) if e else float("nan")


def _columns(rows):
    """Provider columns in a stable order: copy, eager, compile modes, backends."""
    names = []
    for r in rows:
        for n in r.get("providers", {}):
            if n not in names:
                names.append(n)
    rank = {"copy": 0, "eager": 1}
    return sorted(names, key=lambda n: (rank.get(n, 2 if n.startswith("compile") else 3), names.index(n)))


def print_header(providers):
    cols = " ".join(f"{n:>10}" for n in providers)
    print(f"{'op':<5} {'pass':<8} {'net':<17} {'N×C×H×W':<17} {'dtype':<9} {'layout':<13} {cols} "
          f"{'best':>7} {'GB/s':>7} {'%copy':>6} {'×eager':>7} {'×comp':>7} {'err':>8}", flush=True)


def print_row(r, providers):
    if "skipped" in r:
        print(f"{r['op']:<5} {r['pass']:<8} {r['net']:<17} {shape_text(r):<17} {r['dtype']:<9} {r['layout']:<13} "
              f"skipped: {r['skipped']}", flush=True)
        return
    p = r["providers"]
    cols = " ".join(f"{_ms(p[n]['median_ms']) if n in p else '—':>10}" for n in providers)
    best = r["best_fused"]
    tail = (f"{best:>7} {p[best]['gbps']:7.1f} {p[best]['pct_copy_bw']:5.0f}% {_ratio(r, 'speedup_vs_eager'):>7} "
            f"{_ratio(r, 'speedup_vs_compile'):>7} {_max_err(r, best):8.1e}" if best else f"{'—':>7}")
    print(f"{r['op']:<5} {r['pass']:<8} {r['net']:<17} {shape_text(r):<17} {r['dtype']:<9} {r['layout']:<13} "
          f"{cols} {tail}", flush=True)


def env_line(env):
    if env["device"] == "cuda":
        where = f"{env['gpu']} (sm {env['sm']}), CUDA {env['cuda']}, triton {env['triton']}"
    else:
        where = f"{env['cpu']} ({env['threads']} threads, fused `cpu` backend {env['cpu_isa'] or 'not built'})"
    return f"{where}, torch {env['torch']}, timm {env['timm']}, {env['date']}"


def markdown(env, rows):
    """Per op and pass, a table of every provider's median, the best fused
    backend's GB/s and % of copy bandwidth, its speedups, and the errors."""
    lines = [f"# bench.ops on {env_line(env)}", "",
             "Medians in ms (quartiles in the JSON). GB/s and % copy: the best fused backend on the floor bytes "
             "(forward 2|x|: read x, write y; forward+backward 5|x|: also read dy and x, write dx), against "
             "`out.copy_(x)`'s 2|x|. "
             "vs compile: against the fastest compiled mode. err: the best fused backend's largest error "
             "against the float64 reference (fwd+bwd: y, dx, and weight gradients relative to their max).", ""]
    groups = {}
    for r in rows:
        groups.setdefault((r["op"], r["pass"]), []).append(r)
    for (op, pass_name), rs in groups.items():
        measured = [r for r in rs if "skipped" not in r]
        providers = _columns(measured)
        title = OPS[op].title if op in OPS else op
        lines += [f"## {op} {pass_name} — {title}", "",
                  "| net | N×C×H×W | settings | dtype | layout | " + " | ".join(providers)
                  + " | best fused | GB/s | % copy BW | vs eager | vs compile | err |",
                  "|---|---|---|---|---|" + "---:|" * (len(providers) + 6) + "---|"]
        for r in rs:
            desc = OPS[op].describe(Site(r["net"], r["C"], r["H"], r["W"], tuple(r["args"].items()))) \
                if op in OPS else ""
            head = f"| {r['net']} | {shape_text(r)} | {desc} | {r['dtype']} | {r['layout']} | "
            if "skipped" in r:
                lines.append(head + f"skipped: {r['skipped']} |")
                continue
            p, best = r["providers"], r["best_fused"]
            times = " | ".join(_ms(p[n]["median_ms"]) if n in p else "—" for n in providers)
            if best:
                tail = (f"{best} | {p[best]['gbps']:.1f} | {p[best]['pct_copy_bw']:.0f}% | "
                        f"{_ratio(r, 'speedup_vs_eager')} | {_ratio(r, 'speedup_vs_compile')} | "
                        f"{_max_err(r, best):.1e} |")
            else:
                tail = "— | | | | | |"
            lines.append(head + times + " | " + tail)
        lines.append("")
    return "\n".join(lines)


# --- Main -------------------------------------------------------------------------


def _parse(argv):
    p = common.parser(__doc__)
    p.add_argument("--op", default=",".join(OPS), help=f"comma-separated ops (default: all: {','.join(OPS)})")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when a GPU is visible, else cpu")
    p.add_argument("--compile", default=None, metavar="MODES",
                   help="torch.compile modes to time, comma-separated (default, max-autotune, reduce-overhead, "
                        "max-autotune-no-cudagraphs), or 'none'. Default: 'default'; with --full on a GPU "
                        "'default,max-autotune,reduce-overhead'")
    p.add_argument("--dtype", default=None, metavar="DTYPES",
                   help=f"comma-separated dtypes instead of the mode's ({', '.join(DTYPES)}; the quick CPU grid "
                        "has float32 only)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    args.dtypes = None
    if args.dtype is not None:
        args.dtypes = list(dict.fromkeys(d.strip() for d in args.dtype.split(",") if d.strip()))
        if not args.dtypes or any(d not in DTYPES for d in args.dtypes):
            p.error(f"--dtype: {args.dtype!r}; choose from {list(DTYPES)}")
    ops = list(dict.fromkeys(o.strip() for o in args.op.split(",") if o.strip()))
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        p.error(f"--op: unknown {unknown}; choose from {list(OPS)}")
    args.ops = [OPS[o] for o in ops]
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.compile is None:
        args.compile = ("default,max-autotune,reduce-overhead" if args.mode == "full" and args.device == "cuda"
                        else "default")
    args.compile_modes = [] if args.compile == "none" else [m.strip() for m in args.compile.split(",") if m.strip()]
    return args


def main(argv=None):
    args = _parse(argv)
    device = args.device
    # Every row compiles fresh modules of the same classes; keep Dynamo from
    # giving up on them after its default number of recompilations.
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 4096))

    env = common.environment(device)
    env.update(ops={op.name: op.title for op in args.ops}, compile_modes=args.compile_modes,
               fused_backends=fused_backends(device), timing=TIMING[device][args.mode],
               rotate=(f"{GPU_ROTATE_L2}× L2" if device == "cuda"
                       else "max(1 GiB, 2× LLC) of inputs") if args.mode != "smoke" else "none (smoke)")
    print(f"# bench.ops {args.mode} on {env_line(env)}")
    for status in fused_attn.backends().values():
        print(f"#   {status}")
    print(f"# fused backends timed: {', '.join(env['fused_backends']) or 'none'}; "
          f"compile modes: {', '.join(args.compile_modes) or 'none'}", flush=True)

    all_cases = cases(args.ops, args.mode, device, args.dtypes)
    stem = f"ops_{args.mode}" if len(args.ops) == len(OPS) else f"ops_{args.mode}_{'-'.join(o.name for o in args.ops)}"
    if args.dtypes:  # nor does one of other dtypes
        stem += "_" + "-".join(args.dtypes)
    if not args.compile_modes:  # a run without torch.compile does not replace one with it
        stem += "_nocompile"
    out = args.out or os.path.join(common.RESULTS, common.device_folder(env))
    timing = TIMING[device][args.mode]
    progress = common.Progress(len(all_cases))
    rows, header = [], None
    try:
        for case in all_cases:
            row = run_case(case, device, env, args.compile_modes, timing, rotate=args.mode != "smoke")
            if device == "cuda":  # GPU memory is cheap to allocate, and the next row may need all of it
                release_slabs()
                gc.collect()
                torch.cuda.empty_cache()
            rows.append(row)
            providers = _columns([row]) if "providers" in row else header[1] if header else []
            if header is None or header != (row["op"], providers, row["pass"]):
                print_header(providers)
                header = (row["op"], providers, row["pass"])
            print_row(row, providers)
            if not args.no_save:
                common.write(out, stem, env, args.mode, rows, markdown)
            progress.step(f"{case.op.name} {case.pass_name} {shape_text(row)} {case.dtype} {case.layout}")
    finally:
        release_slabs()
        if rows and not args.no_save:
            path = os.path.join(out, stem)
            if not args.no_plot:
                from . import plot
                plot.plot(f"{path}.png", env, rows)
            print(f"# wrote {path}.json, .md" + ("" if args.no_plot else " and .png"))
    return rows


if __name__ == "__main__":
    main()
