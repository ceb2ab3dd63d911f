"""Compile every Triton kernel variant the package launches, without a GPU.

The Triton kernels (fused_attn/triton/{se,eca,cbam}.py) are tested on CPU
tensors under TRITON_INTERPRET=1, which never compiles them, so a kernel the
real compiler rejects would only show up on a GPU. This tool finds such
failures on a CPU-only machine, in three steps:

1. Record. Under TRITON_INTERPRET=1, it runs a fixed set of op calls on the
   "triton" backend: SE, ECA and CBAM, forward and backward, in fp32, fp16,
   bf16 and fp64, NCHW and channels_last, with the op variants, on small,
   odd and large shapes (so different tile sizes are chosen). Every launch
   goes through ``fused_attn.triton.se.launch``, so the tool wraps
   ``launch.__getitem__``. For each launch it records the kernel, the
   constexpr keyword arguments and the kind of each argument as Triton
   specializes it: a tensor becomes a pointer of its dtype, an int becomes
   i32 or i64 by its magnitude (1 becomes a constexpr), a float becomes fp32
   and None a constexpr. It also watches the interpreter's stores to see
   which tensor arguments the kernel really writes. Only distinct variants
   are kept. Divisibility by 16 is not part of a variant unless you pass
   --exact; otherwise the first launch seen stands for the variant. Some
   variants are compiled a second time with their ints widened to i64, as
   they are for tensors of 2**31 or more elements. By default that is one
   per kernel, pointer dtypes and non-int constexprs; --i64 all does it for
   every variant and --i64 none skips it. A kernel that the op calls never
   launch counts as a failure.
2. Compile. This runs in a child process without TRITON_INTERPRET. Under the
   interpreter, @triton.jit gives InterpretedFunctions, for the kernels and
   for the helpers they call, and those cannot be compiled. The child
   specializes each variant with Triton's own launch binder, exactly as
   JITFunction.run would, then runs ``triton.compile(ASTSource(...),
   target=GPUTarget("cuda", 90, 32))`` down to a cubin (ptxas included). It
   uses a fresh Triton cache, so every variant is really compiled. Then it
   reads what a launch would need: shared memory per block (Triton's
   metadata) against the target's largest part (an H100 allows 227 KiB, an
   MI300 64 KiB: beyond that the launch raises OutOfResources), and on CUDA
   each kernel's registers and local memory (spills, a stack) by the
   cuobjdump that Triton ships. Too much shared memory, or registers x
   threads beyond an SM's 64K, is a failure; so is more than SPILL_LIMIT
   bytes of local memory per thread in a variant the ops launch with 16- or
   32-bit tensors (float64 variants and the i64 widenings below are only
   reported). The largest figures and every kernel with local memory are
   printed.
3. Mutation check (--mutation). For each recorded variant, the child also
   runs the analysis torch.compile uses to decide which tensors a user Triton
   kernel mutates. That is get_mutated_tensors, identify_accessed_tensors or
   identify_mutated_tensors in torch._higher_order_ops.triton_kernel_wrap,
   whichever this torch has. Triton's active driver is swapped for a
   stand-in that reports sm_90. Two things count as failures. One is a
   tensor the interpreted kernel stored to that the analysis does not report
   as mutated: Inductor could drop or reorder that write. The other is an
   analysis that raised, because torch then quietly assumes every input is
   mutated. If the analysis reports a tensor that the kernel never stored to,
   the tool prints a note only: that costs a copy, not correctness.

The tool prints the number of variants, the times, and every failure with
its error, grouped by kernel. It exits with 1 if anything failed, and with 2
if the tool itself could not run.

Usage, from the repository root, with the environment to check:

    .venv/bin/python tools/triton_compile_check.py [--mutation] [-v]
    .venv-floor/bin/python tools/triton_compile_check.py --mutation

Other options:

    -j, --jobs N        compile in N processes, each on a share of the variants
                        (default: one per core; a compile is single-threaded)
    --arch N            compile for sm_N instead of sm_90
    --target T          cuda:N (as --arch N) or hip:ARCH, e.g. hip:gfx942 (MI300):
                        Triton's AMD backend, down to an hsaco (wavefront 64)
    --i64 some|all|none how many variants to compile again with i64 ints
    --exact             make divisibility by 16 part of a variant
    --list              print every variant
    --record-only       record only, compile nothing
    --save / --load F   write recorded variants as JSON, or compile those of F
    --cache-dir DIR     reuse this Triton cache instead of a fresh one
    --spec manual       build signatures by hand, not with Triton's binder
    --mutation-api X    choose the torch entry point for --mutation
    --pytest ARGS...    record while running a pytest selection instead of the
                        built-in op calls; everything after --pytest goes to
                        pytest, e.g. --pytest tests/test_cbam.py -k triton -x
"""
import argparse
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_MODULES = ("fused_attn.triton.se", "fused_attn.triton.eca", "fused_attn.triton.cbam")
I32_MIN, I32_MAX = -2**31, 2**31 - 1
WIDEN = 2**32   # added to an int to make it an i64 of the same divisibility by 16


def _fail_line(exc):
    """An exception as a short block: its type and message; of a long message (a
    CompilationError's source excerpt) the first line and the last ones, where
    the caret and the actual error are."""
    msg = str(exc).strip()
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    if len(lines) > 10:
        lines = lines[:1] + [f"... ({len(lines) - 8} lines)"] + lines[-7:]
    if exc.__cause__ is not None and str(exc.__cause__) not in msg:
        lines.append(f"caused by {type(exc.__cause__).__name__}: {str(exc.__cause__).strip()[:500]}")
    return f"{type(exc).__name__}: " + "\n    ".join(lines)


# ---- argument kinds ------------------------------------------------------------

def _encode(value):
    """A launch argument as JSON: what the compile pass needs to rebuild an equivalent one."""
    import torch
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        return {"k": "tensor", "dtype": str(value.dtype).replace("torch.", ""),
                "aligned": value.data_ptr() % 16 == 0}
    if value is None:
        return {"k": "none"}
    if isinstance(value, bool):
        return {"k": "bool", "v": value}
    if isinstance(value, int):
        return {"k": "int", "v": int(value)}
    if isinstance(value, float):
        return {"k": "float", "v": value}
    if isinstance(value, tl.dtype):
        return {"k": "tl_dtype", "v": str(value)}
    if isinstance(value, str):
        return {"k": "str", "v": value}
    if isinstance(value, tl.constexpr):
        return _encode(value.value)
    raise TypeError(f"cannot record an argument of type {type(value).__name__}: {value!r}")


def _decode(enc):
    import torch
    import triton.language as tl

    k = enc["k"]
    if k == "tensor":
        # A fresh allocation is 16-byte aligned (as a CUDA caching-allocator block is);
        # a view one element in is not, as a recorded view into a bigger tensor may not be.
        t = torch.empty(32, dtype=getattr(torch, enc["dtype"]))
        return t if enc.get("aligned", True) else t[1:]
    if k == "none":
        return None
    if k == "tl_dtype":
        return tl.dtype(enc["v"])
    return enc["v"]


def _int_kind(v):
    """Triton's type for a non-constexpr int argument (and the specialization of 1)."""
    if v == 1:
        return "=1"
    if I32_MIN <= v <= I32_MAX:
        return "i32"
    return "u64" if v >= 2**63 else "i64"


def _token(name, enc, constexpr, exact):
    """One argument's part of a variant's key."""
    k = enc["k"]
    if constexpr:
        return f"{name}={enc.get('v', enc.get('dtype'))}"
    if k == "tensor":
        return f"*{enc['dtype']}" + (":D" if exact and enc.get("aligned", True) else "")
    if k == "int":
        v = enc["v"]
        kind = _int_kind(v)
        return kind + (":D" if exact and kind != "=1" and v % 16 == 0 else "")
    if k == "float":
        return "fp32"
    if k == "none":
        return "None"
    return f"{k}:{enc.get('v')}"


# Launch options a kernel call may pass beside its parameters (compile options,
# part of a variant: num_warps changes the code).
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _options_label(v):
    opts = v.get("options") or {}
    return "".join(f" {k}={opts[k]}" for k in sorted(opts))


def variant_key(v, exact):
    toks = [_token(n, v["args"][n], n in v["constexprs"], exact) for n in v["params"]]
    return f"{v['module']}.{v['kernel']}(" + ", ".join(toks) + ")" + _options_label(v)


def kernel_name(v):
    """module.kernel of a variant, the module without its package: se._pool_kernel."""
    return f"{v['module'].rsplit('.', 1)[-1]}.{v['kernel']}"


def variant_label(v):
    """Short description: kernel, the runtime arguments' kinds (":D": an int divisible
    by 16; ":unaligned": a pointer that is not 16-byte aligned), then the constexprs."""
    def rt_token(n):
        a = v["args"][n]
        if a["k"] == "tensor":
            return f"*{a['dtype']}" + ("" if a.get("aligned", True) else ":unaligned")
        return _token(n, a, False, True)

    rt = [rt_token(n) for n in v["params"] if n not in v["constexprs"]]
    ce = [_token(n, v["args"][n], True, False) for n in v["params"] if n in v["constexprs"]]
    return f"{kernel_name(v)}({', '.join(rt)} | {' '.join(ce)}{_options_label(v)})"


# ---- pass 1: record under the interpreter --------------------------------------

def _python_fn(kernel):
    """The Python function behind a JITFunction / InterpretedFunction (or wrapper of one)."""
    fn = kernel
    for _ in range(5):
        if inspect.isfunction(fn):
            return fn
        fn = getattr(fn, "fn", None)
    raise TypeError(f"cannot find the Python function of kernel {kernel!r}")


def _is_constexpr_param(fn, name):
    ann = fn.__annotations__.get(name)
    return ann is not None and "constexpr" in (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann)))


def _extent(t):
    """[start, end) bytes a tensor's elements span, or None if it has none."""
    if t.numel() == 0:
        return None
    lo = sum(min(0, (s - 1) * st) for s, st in zip(t.shape, t.stride(), strict=True))
    hi = sum(max(0, (s - 1) * st) for s, st in zip(t.shape, t.stride(), strict=True))
    size = t.element_size()
    return t.data_ptr() + lo * size, t.data_ptr() + (hi + 1) * size


class Recorder:
    """Wraps ``launch.__getitem__`` and the interpreter's stores while active."""

    def __init__(self, exact):
        self.exact = exact
        self.variants = {}          # key -> variant dict
        self.launches = 0
        self.skipped = 0            # launches on fake / traced tensors (nothing runs)
        self.scenario = ""
        self.errors = []            # (op call, error) of the calls that raised
        self.hook_errors = []       # the store hook could not read a store's addresses
        self._sig = {}
        self._stores = None         # [(name, start, end)] of the running launch, and the names hit

    # -- the interpreter's memory writes --
    def _note_stores(self, ptrs, mask):
        import numpy as np

        st = self._stores
        if st is None:
            return
        targets, hit = st
        addrs = np.asarray(ptrs.data)
        if mask is not None:
            m = np.asarray(mask.data)
            addrs = addrs[np.broadcast_to(m, addrs.shape)] if m.shape != () else (addrs if m else addrs[:0])
        if addrs.size == 0:
            return
        lo, hi = int(addrs.min()), int(addrs.max())
        for name, start, end in targets:
            if name in hit or hi < start or lo >= end:
                continue
            if ((addrs >= start) & (addrs < end)).any():
                hit.add(name)

    @contextlib.contextmanager
    def _patch_interpreter(self):
        from triton.runtime import interpreter

        ib = interpreter.InterpreterBuilder
        saved = {}
        rec = self

        def wrap(name, pick):
            orig = getattr(ib, name, None)
            if orig is None:
                return
            saved[name] = orig

            def patched(builder, *args, **kwargs):
                try:
                    ptrs, mask = pick(args)
                    rec._note_stores(ptrs, mask)
                except Exception as exc:  # noqa: BLE001  (another interpreter: say so, run on)
                    rec.hook_errors.append(f"{name}: {_fail_line(exc)}")
                return orig(builder, *args, **kwargs)

            setattr(ib, name, patched)

        # create_store and the block-pointer store call create_masked_store.
        wrap("create_masked_store", lambda a: (a[0], a[2]))
        wrap("create_atomic_rmw", lambda a: (a[1], a[3]))
        wrap("create_atomic_cas", lambda a: (a[0], None))
        try:
            yield
        finally:
            for name, orig in saved.items():
                setattr(ib, name, orig)

    # -- the launches --
    def _record(self, kernel, args, meta):
        import torch

        fn = _python_fn(kernel)
        sig = self._sig.get(fn)
        if sig is None:
            sig = self._sig[fn] = inspect.signature(fn)
        options = {k: meta[k] for k in LAUNCH_OPTIONS if k in meta}
        bound = sig.bind(*args, **{k: a for k, a in meta.items() if k not in options})
        params = list(sig.parameters)
        constexprs = [n for n in params if _is_constexpr_param(fn, n)]
        v = {"module": fn.__module__, "kernel": fn.__name__, "params": params, "constexprs": constexprs,
             "options": options, "args": {n: _encode(bound.arguments[n]) for n in params}, "launches": 0,
             "stored": [],
             "first": self.scenario or os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0],
             "synthetic": False}
        key = variant_key(v, self.exact)
        v = self.variants.setdefault(key, v)
        v["launches"] += 1
        targets = [(n, *ext) for n in params if isinstance(bound.arguments[n], torch.Tensor)
                   for ext in [_extent(bound.arguments[n])] if ext is not None]
        return v, targets

    @contextlib.contextmanager
    def active(self):
        import torch
        from torch._subclasses.fake_tensor import is_fake

        from fused_attn.triton import se as tse

        cls = tse.launch
        orig_getitem = cls.__getitem__
        rec = self

        def plain(a):
            return (not isinstance(a, torch.Tensor)) or (type(a) in (torch.Tensor, torch.nn.Parameter)
                                                          and not is_fake(a) and a.device.type == "cpu")

        def getitem(launcher, grid):
            run = orig_getitem(launcher, grid)

            def recorded(*args, **meta):
                compiling = getattr(torch.compiler, "is_compiling", lambda: False)()
                if compiling or not all(plain(a) for a in list(args) + list(meta.values())):
                    rec.skipped += 1
                    return run(*args, **meta)
                v, targets = rec._record(launcher.kernel, args, meta)
                rec.launches += 1
                hit = set()
                rec._stores = (targets, hit)
                try:
                    return run(*args, **meta)
                finally:
                    rec._stores = None
                    if hit - set(v["stored"]):
                        v["stored"] = [n for n in v["params"] if n in hit or n in v["stored"]]

            return recorded

        with self._patch_interpreter():
            cls.__getitem__ = getitem
            try:
                yield self
            finally:
                cls.__getitem__ = orig_getitem


def _randn(shape, dtype, cl, grad=True):
    import torch

    x = torch.randn(shape, dtype=torch.float32).to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(grad)


def _fwd_bwd(y):
    import torch

    y.backward(torch.randn_like(y))


def run_ops(rec):
    """The representative op calls: every op, dtype, layout and variant, and shapes
    that choose different tiles (se.tiles, cbam._pix_tiles, cbam._map_tiles) and
    int specializations (C = 1, H·W = 1, multiples of 16, odd sizes)."""
    import torch

    import fused_attn

    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    # H·W: 25 (odd, narrow tiles), 143 (a tail past one 128 block), 49 with C = 1,
    # 1 (widest C tile, H·W constexpr), 2304 (several full 128-pixel blocks, multiples of 16).
    shapes = [(2, 8, 5, 5), (2, 20, 13, 11), (3, 1, 7, 7), (2, 32, 1, 1), (1, 16, 48, 48)]

    def se(x, bias=True, effective=False, pool="avg", act="relu", gate="sigmoid"):
        C = x.shape[1]
        rd = C if effective else max(1, C // 4)
        w1 = _randn((rd, C), x.dtype, False)
        b1 = _randn((rd,), x.dtype, False) if bias else None
        w2 = None if effective else _randn((C, rd), x.dtype, False)
        b2 = _randn((C,), x.dtype, False) if bias and not effective else None
        _fwd_bwd(fused_attn.squeeze_excitation(x, w1, b1, w2, b2, act=act, gate=gate, pool=pool))

    def eca(x, k=3, bias=False, padding="zeros", gate="sigmoid"):
        w = _randn((k,), x.dtype, False)
        b = _randn((1,), x.dtype, False) if bias else None
        _fwd_bwd(fused_attn.efficient_channel_attention(x, w, b, padding=padding, gate=gate))

    def cbam(x, k=7, light=False, bn="train", bias=False, gate="sigmoid", act="relu", pool_order="mean_max"):
        C = x.shape[1]
        rd = max(1, C // 2)
        dt = x.dtype
        kw = dict(act=act, gate=gate, light=light, pool_order=pool_order)
        if bn in ("train", "eval"):
            kw.update(bn_weight=_randn((1,), dt, False), bn_bias=_randn((1,), dt, False),
                      bn_running_mean=torch.zeros(1, dtype=dt), bn_running_var=torch.ones(1, dtype=dt),
                      bn_num_batches_tracked=torch.zeros((), dtype=torch.long), bn_training=bn == "train")
        y = fused_attn.cbam(x, _randn((rd, C), dt, False), _randn((rd,), dt, False) if bias else None,
                            _randn((C, rd), dt, False), _randn((C,), dt, False) if bias else None,
                            _randn((1, 1 if light else 2, k, k), dt, False), **kw)
        _fwd_bwd(y)

    calls = []
    for dt in dtypes:
        name = str(dt).replace("torch.", "")
        for cl in (False, True):
            layout = "channels_last" if cl else "nchw"
            for shape in shapes:
                tag = f"{name} {layout} {'x'.join(map(str, shape))}"
                calls += [(f"se avg {tag}", shape, dt, cl, lambda x: se(x)),
                          (f"se avgmax {tag}", shape, dt, cl, lambda x: se(x, bias=False, pool="avgmax")),
                          (f"eca {tag}", shape, dt, cl, lambda x: eca(x)),
                          (f"cbam k7 {tag}", shape, dt, cl, lambda x: cbam(x))]
            # The variants that change no kernel argument still run once per dtype
            # and layout (gates, activations, biases, BatchNorm modes, ...).
            shape = (2, 8, 5, 5)
            tag = f"{name} {layout} 2x8x5x5"
            calls += [
                (f"se effective+bias hard_sigmoid silu {tag}", shape, dt, cl,
                 lambda x: se(x, effective=True, gate="hard_sigmoid", act="silu")),
                (f"se effective avgmax {tag}", shape, dt, cl, lambda x: se(x, effective=True, bias=False,
                                                                           pool="avgmax")),
                (f"eca circular k5 bias {tag}", shape, dt, cl,
                 lambda x: eca(x, k=5, bias=True, padding="circular")),
                (f"eca zeros bias hard_sigmoid {tag}", shape, dt, cl,
                 lambda x: eca(x, bias=True, gate="hard_sigmoid")),
                (f"eca circular k3 (C < k) {name} {layout} 2x2x3x3", (2, 2, 3, 3), dt, cl,
                 lambda x: eca(x, padding="circular")),
                (f"cbam light k7 {tag}", shape, dt, cl, lambda x: cbam(x, light=True)),
                (f"cbam light k3 eval {tag}", shape, dt, cl, lambda x: cbam(x, k=3, light=True, bn="eval")),
                (f"cbam k3 eval bias hard_sigmoid {tag}", shape, dt, cl,
                 lambda x: cbam(x, k=3, bn="eval", bias=True, gate="hard_sigmoid", act="silu")),
                (f"cbam k7 no-running-stats max_mean {tag}", shape, dt, cl,
                 lambda x: cbam(x, bn="none", pool_order="max_mean")),
            ]
    torch.manual_seed(0)
    with fused_attn.use_backend("triton"):
        for label, shape, dt, cl, call in calls:
            rec.scenario = label
            try:
                call(_randn(shape, dt, cl))
            except Exception as exc:  # noqa: BLE001  (reported; the other calls still run)
                rec.errors.append((label, _fail_line(exc)))
    rec.scenario = ""
    return len(calls)


def widened(v):
    """The variant with its i32 arguments as i64 (values + 2**32), or None if it has none."""
    w = json.loads(json.dumps(v))
    changed = False
    for n in w["params"]:
        a = w["args"][n]
        if n not in w["constexprs"] and a["k"] == "int" and _int_kind(a["v"]) == "i32":
            a["v"] += WIDEN if a["v"] >= 0 else -WIDEN
            changed = True
    if not changed:
        return None
    w.update(synthetic=True, launches=0, stored=[], first=f"i64 widening of: {variant_label(v)}")
    return w


def _launchable_kernels():
    """(module, name) of every jit function in the kernel modules that no other one
    calls: the kernels (the rest, e.g. se.sample_and_block, are device helpers)."""
    fns = {}
    for m in KERNEL_MODULES:
        mod = importlib.import_module(m)
        for name, obj in vars(mod).items():
            fn = getattr(obj, "fn", None)
            if type(obj).__name__ in ("JITFunction", "InterpretedFunction") and inspect.isfunction(fn) \
                    and fn.__module__ == m:
                fns[(m, name)] = inspect.getsource(fn)
    called = {name for (_, name) in fns for key, src in fns.items()
              if key[1] != name and re.search(rf"\b{re.escape(name)}\(", src)}
    return sorted(k for k in fns if k[1] not in called)


def record(args):
    """Pass 1, in this process (TRITON_INTERPRET=1): the recorded variants."""
    import torch

    torch.set_num_threads(1)   # one busy core
    import fused_attn  # noqa: F401
    from fused_attn import triton as fa_triton

    if not fa_triton.AVAILABLE:
        raise SystemExit(f"error: {fa_triton.ERROR}")
    if not fa_triton.INTERPRET:
        raise SystemExit("error: the kernels were not loaded under TRITON_INTERPRET=1")
    # The suite's shortcut through the interpreter (the same execution and
    # stores, without re-patching triton.language at every helper call).
    from tests.triton_interpreter import skip_nested_patching

    skip_nested_patching()
    rec = Recorder(args.exact)
    t0 = time.perf_counter()
    with rec.active():
        if args.pytest is not None:
            import pytest

            rc = pytest.main(["-q", "-p", "no:cacheprovider"] + args.pytest)
            calls = f"pytest {' '.join(args.pytest)} (exit {int(rc)})"
        else:
            calls = f"{run_ops(rec)} op calls"
    elapsed = time.perf_counter() - t0
    variants = list(rec.variants.values())
    launched = {(v["module"], v["kernel"]) for v in variants}
    missed = [f"{m}.{n}" for m, n in _launchable_kernels() if (m, n) not in launched]
    if args.i64 != "none":
        seen = set(rec.variants)
        # --i64 some: one widened variant per kernel, pointer dtypes and non-int
        # constexprs (ACC, WITH_MAX) and launch options (num_warps): tile sizes and
        # which ints are 1 hardly change how the i64 index arithmetic compiles.
        # --i64 all: one per recorded variant.
        coarse = set()
        for v in list(variants):
            w = widened(v)
            if w is None:
                continue
            k = variant_key(w, args.exact)
            ck = k if args.i64 == "all" else (w["module"], w["kernel"], tuple(
                _token(n, a, n in w["constexprs"], False) for n, a in w["args"].items()
                if a["k"] not in ("int", "none")), _options_label(w))
            if k in seen or ck in coarse:
                continue
            seen.add(k)
            coarse.add(ck)
            variants.append(w)
    info = {"calls": calls, "launches": rec.launches, "skipped": rec.skipped, "record_s": elapsed,
            "errors": rec.errors, "recorded": len(rec.variants), "widened": len(variants) - len(rec.variants),
            "not_launched": missed, "not_launched_fails": args.pytest is None}
    if rec.hook_errors:   # the stores seen (the mutation check's reference) are incomplete
        info["errors"].append((f"(store hook, {len(rec.hook_errors)} times)", rec.hook_errors[0]))
    return variants, info


# ---- pass 2: compile (and the mutation analysis), TRITON_INTERPRET unset ---------

class _SmDriver:
    """A stand-in for triton.runtime.driver.active on a machine without a GPU:
    torch's TTIR generation only asks it for the target."""

    def __init__(self, target):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def is_active(self):
        return True


def _tl_type_name(dtype_name):
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int32": "i32",
            "int64": "i64", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}[dtype_name]


def _kernel(v):
    from triton.runtime.jit import JITFunction

    k = getattr(importlib.import_module(v["module"]), v["kernel"])
    if not isinstance(k, JITFunction):
        raise TypeError(f"{v['module']}.{v['kernel']} is a {type(k).__name__}, not a JITFunction "
                        "(is TRITON_INTERPRET set?)")
    return k


def _spec_native(kernel, values, backend, launch_options):
    """(signature, constexprs, attrs, options) exactly as JITFunction.run would
    build them for these arguments: Triton's own binder and _pack_args."""
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(**values, **launch_options)
    options, signature, constexprs, attrs = kernel._pack_args(backend, dict(values, **launch_options), bound,
                                                              specialization, options)
    return signature, constexprs, attrs, options


def _spec_manual(kernel, v, values, backend, launch_options):
    """The same by hand, for a Triton whose binder differs: no divisibility attributes."""
    signature, constexprs = {}, {}
    for name in v["params"]:
        a, val = v["args"][name], values[name]
        if name in v["constexprs"] or a["k"] in ("none", "tl_dtype", "str") or (a["k"] == "int" and val == 1):
            signature[name], constexprs[name] = "constexpr", val
        elif a["k"] == "tensor":
            signature[name] = "*" + _tl_type_name(a["dtype"])
        elif a["k"] == "int":
            signature[name] = _int_kind(val) if val != 1 else "constexpr"
        elif a["k"] == "bool":
            signature[name] = "i1"
        elif a["k"] == "float":
            signature[name] = "fp32"
    return signature, constexprs, {}, backend.parse_options(dict(launch_options))


def _ast_source(kernel, signature, constexprs, attrs):
    from triton.compiler import ASTSource

    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in params:       # triton 3.6 and 3.8 (identical here)
        return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return ASTSource(fn=kernel, signature=signature, constants=constexprs, attrs=attrs)


def parse_target(spec):
    """'cuda:90' -> ("cuda", 90, 32); 'hip:gfx942' -> ("hip", "gfx942", 64): GPUTarget's fields."""
    backend, _, arch = spec.partition(":")
    if backend == "cuda" and arch.isdigit():
        return "cuda", int(arch), 32
    if backend == "hip" and re.fullmatch(r"gfx[0-9a-f]+", arch):
        return "hip", arch, 64
    raise ValueError(f"--target {spec!r}: expected cuda:<compute capability> (cuda:90) or hip:<gfx arch> "
                     "(hip:gfx942)")


def target_label(t):
    return f"cuda sm_{t[1]}" if t[0] == "cuda" else f"hip {t[1]} (wavefront {t[2]})"


# What one block (workgroup) may take, per target: shared memory (LDS) as the
# launch checks it (Triton's loader raises OutOfResources past the device's
# opt-in maximum per block; the interpreter never compiles, so a tile that
# needs more passes CI and fails on the first GPU), and 32-bit registers per
# SM. CUDA: cudaDevAttrMaxSharedMemoryPerBlockOptin by compute capability;
# AMD: the LDS per workgroup.
SHARED_LIMITS = {
    ("cuda", 75): 65536, ("cuda", 80): 166912, ("cuda", 86): 101376, ("cuda", 87): 166912,
    ("cuda", 89): 101376, ("cuda", 90): 232448, ("cuda", 100): 232448, ("cuda", 103): 232448,
    ("cuda", 120): 101376,
    ("hip", "gfx90a"): 65536, ("hip", "gfx942"): 65536, ("hip", "gfx950"): 163840,
}
REGISTERS_PER_SM = 65536
SPILL_LIMIT = 64    # bytes of local memory per thread that a recorded 16/32-bit variant may take (see below)


def _cubin_resources(cubin):
    """REG, LOCAL and STACK of the one kernel in a cubin, by the cuobjdump that
    Triton ships (`-res-usage`), or None where there is none."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    tool = tool if os.path.exists(tool) else shutil.which("cuobjdump")
    if not tool:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"\b(REG|LOCAL|STACK):(\d+)", text))
    if "REG" not in found:
        raise RuntimeError(f"cuobjdump -res-usage: no REG in {text!r}")
    return {"regs": int(found["REG"]), "local": int(found.get("LOCAL", 0)), "stack": int(found.get("STACK", 0))}


def resource_problems(r, target_spec):
    """What a launch of this compiled variant would be refused for, on the
    largest part of its target: a list of strings (empty: it fits)."""
    problems = []
    limit = SHARED_LIMITS.get((target_spec[0], target_spec[1]))
    if limit is not None and r.get("shared") is not None and r["shared"] > limit:
        problems.append(f"needs {r['shared']} B of shared memory per block; {target_label(target_spec)} "
                        f"allows {limit}")
    if r.get("regs") is not None and r["regs"] * r["threads"] > REGISTERS_PER_SM:
        problems.append(f"{r['regs']} registers x {r['threads']} threads = {r['regs'] * r['threads']} > "
                        f"{REGISTERS_PER_SM} per SM")
    return problems


def compile_all(variants, target_spec, spec_mode, verbose):
    import torch  # noqa: F401  (before triton, as the package does)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    for m in KERNEL_MODULES:
        importlib.import_module(m)
    target = GPUTarget(*target_spec)
    binary = "cubin" if target.backend == "cuda" else "hsaco"   # the last stage: what a launch loads
    backend = make_backend(target)
    results = []
    t_all = time.perf_counter()
    for i, v in enumerate(variants):
        r = {"key": v["key"], "ok": False, "error": None, "seconds": 0.0, "signature": None, "spec": spec_mode}
        t0 = time.perf_counter()
        try:
            kernel = _kernel(v)
            values = {n: _decode(v["args"][n]) for n in v["params"]}
            launch_options = v.get("options") or {}
            if spec_mode == "native":
                try:
                    signature, constexprs, attrs, options = _spec_native(kernel, values, backend, launch_options)
                except (AttributeError, TypeError) as exc:   # another Triton's private API
                    r["spec"] = f"manual ({type(exc).__name__}: {exc})"
                    signature, constexprs, attrs, options = _spec_manual(kernel, v, values, backend, launch_options)
            else:
                signature, constexprs, attrs, options = _spec_manual(kernel, v, values, backend, launch_options)
            r["signature"] = {k: str(t) for k, t in signature.items()}
            src = _ast_source(kernel, signature, constexprs, attrs)
            compiled = triton.compile(src, target=target, options=options.__dict__)
            if binary not in compiled.asm:
                raise RuntimeError(f"no {binary} produced (stages: {list(compiled.asm)})")
            md = compiled.metadata
            r["shared"] = int(md.shared)
            r["threads"] = int(md.num_warps) * int(getattr(md, "warp_size", target_spec[2]) or target_spec[2])
            if target.backend == "cuda":
                r.update(_cubin_resources(compiled.asm["cubin"]) or {})
            r["ok"] = True
        except Exception as exc:  # noqa: BLE001  (every failure is reported)
            r["error"] = _fail_line(exc)
            if verbose:
                r["traceback"] = traceback.format_exc()
        r["seconds"] = time.perf_counter() - t0
        if verbose:
            print(f"  [{i + 1}/{len(variants)}] {'ok  ' if r['ok'] else 'FAIL'} {r['seconds']:5.2f}s "
                  f"{variant_label(v)}", flush=True)
        results.append(r)
    return results, time.perf_counter() - t_all


class _WarningCatcher(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


MUTATION_APIS = ("get_mutated_tensors", "identify_accessed_tensors", "identify_mutated_tensors")


def _mutation_api(prefer="auto"):
    """(name, fn(kernel, tensor_kwargs, constant_kwargs) -> mutated names) of this torch:
    get_mutated_tensors (what functionalization runs for a wrap_triton launch) if it
    has it, else what Inductor's ir.py calls (identify_accessed_tensors in newer
    torch, identify_mutated_tensors in older)."""
    from torch._higher_order_ops import triton_kernel_wrap as tkw

    def n_params(fn):
        return len(inspect.signature(fn).parameters)

    def get_mutated_tensors(kernel, tensors, constants):
        kidx = tkw.kernel_side_table.add_kernel(kernel)
        cidx = tkw.kernel_side_table.add_constant_args(constants)
        extra = [{}] if n_params(tkw.get_mutated_tensors) >= 4 else []   # tma_descriptor_metadata
        return list(tkw.get_mutated_tensors(kidx, cidx, tensors, *extra))

    def identify_accessed_tensors(kernel, tensors, constants):
        acc = tkw.identify_accessed_tensors(kernel, {**tensors, **constants}, {})
        return [d.name for d in acc.read_writes.writes if d.name in tensors]

    def identify_mutated_tensors(kernel, tensors, constants):
        extra = [{}] if n_params(tkw.identify_mutated_tensors) >= 3 else []
        return [n for n in tkw.identify_mutated_tensors(kernel, {**tensors, **constants}, *extra) if n in tensors]

    impls = {"get_mutated_tensors": get_mutated_tensors, "identify_accessed_tensors": identify_accessed_tensors,
             "identify_mutated_tensors": identify_mutated_tensors}
    have = [n for n in MUTATION_APIS if hasattr(tkw, n) and (n != "get_mutated_tensors"
                                                              or hasattr(tkw, "kernel_side_table"))]
    if prefer != "auto":
        if prefer not in have:
            raise RuntimeError(f"this torch has no torch._higher_order_ops.triton_kernel_wrap.{prefer} "
                               f"(it has: {', '.join(have) or 'none'})")
        have = [prefer]
    if not have:
        raise RuntimeError("this torch has none of " + " / ".join(MUTATION_APIS)
                           + " in torch._higher_order_ops.triton_kernel_wrap")
    return have[0], impls[have[0]]


def mutation_all(variants, target_spec, prefer="auto"):
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    from torch._higher_order_ops import triton_kernel_wrap as tkw

    name, analyze = _mutation_api(prefer)
    drv = triton.runtime.driver
    saved = getattr(drv, "_active", None)
    drv.set_active(_SmDriver(GPUTarget(*target_spec)))
    # The analysis logs its failures (to torch._dynamo's logger) and goes on as if
    # every input were mutated: catch those records, and keep them off stderr.
    catcher = _WarningCatcher()
    log = getattr(tkw, "log", None) or logging.getLogger("torch._dynamo")
    log_state = (log.handlers[:], log.propagate, log.level)
    log.handlers[:] = [catcher]
    log.propagate = False
    if log.getEffectiveLevel() > logging.WARNING:
        log.setLevel(logging.WARNING)
    results = []
    t_all = time.perf_counter()
    try:
        for v in variants:
            if v["synthetic"]:
                continue
            r = {"key": v["key"], "mutated": None, "stored": v["stored"], "problems": []}
            try:
                kernel = _kernel(v)
                tensors, constants = {}, {}
                for n in v["params"]:
                    val = _decode(v["args"][n])
                    (tensors if isinstance(val, torch.Tensor) else constants)[n] = val
                catcher.records.clear()
                r["mutated"] = sorted(set(analyze(kernel, tensors, constants)), key=v["params"].index)
                for rec in catcher.records:
                    msg = rec.getMessage()
                    if "exception" not in msg.lower():
                        continue
                    if rec.exc_info and rec.exc_info[1] is not None:
                        msg += "\n  " + _fail_line(rec.exc_info[1])
                    r["problems"].append(f"the analysis failed (torch then assumes every input mutated): {msg}")
                missing = [n for n in v["stored"] if n not in r["mutated"]]
                if missing:
                    r["problems"].append(f"stored to but not reported as mutated: {', '.join(missing)} "
                                         f"(reported: {', '.join(r['mutated']) or 'none'})")
                r["extra"] = [n for n in r["mutated"] if n not in v["stored"]]
            except Exception as exc:  # noqa: BLE001
                r["problems"].append(f"the analysis raised: {_fail_line(exc)}")
            results.append(r)
    finally:
        log.handlers[:], log.propagate = log_state[:2]
        log.setLevel(log_state[2])
        drv.set_active(saved) if saved is not None else setattr(drv, "_active", None)
    return name, results, time.perf_counter() - t_all


def worker(args):
    """Pass 2, in a child process without TRITON_INTERPRET."""
    import torch
    import triton

    with open(args.worker_in) as f:
        job = json.load(f)
    variants = job["variants"]
    out = {"torch": torch.__version__, "triton": triton.__version__}
    out["compile"], out["compile_s"] = compile_all(variants, job["target"], job["spec"], job["verbose"])
    if job["mutation"]:
        out["mutation_api"], out["mutation"], out["mutation_s"] = mutation_all(variants, job["target"],
                                                                               job["mutation_api"])
    with open(args.worker_out, "w") as f:
        json.dump(out, f)


# ---- the driver ------------------------------------------------------------------

def _print_resources(comp, by_key, target_spec, fail):
    """The largest shared memory and register counts of the compiled variants,
    the variants that use local memory (spills or a stack), and a failure for
    each variant a launch would refuse."""
    done = [r for r in comp if r["ok"] and r.get("shared") is not None]
    if not done:
        return

    def name(r):
        return kernel_name(by_key[r["key"]])

    top = max(done, key=lambda r: r["shared"])
    limit = SHARED_LIMITS.get((target_spec[0], target_spec[1]))
    line = (f"resources: shared memory at most {top['shared']} B per block ({name(top)}), limit "
            + (f"{limit} B" if limit is not None else "unknown for this target (not checked)"))
    with_regs = [r for r in done if r.get("regs") is not None]
    if with_regs:
        top_r = max(with_regs, key=lambda r: r["regs"])
        line += f"; registers at most {top_r['regs']} per thread ({name(top_r)}, {top_r['threads']} threads)"
    elif target_spec[0] == "cuda":
        line += "; registers not read (no cuobjdump)"
    print(line)
    local = {}
    for r in with_regs:
        if r["local"] or r["stack"]:
            local.setdefault(name(r), []).append(r)
    for k, rs in sorted(local.items()):
        worst = max(rs, key=lambda r: r["local"] + r["stack"])
        print(f"  note: {k}: local memory in {len(rs)} variant(s) (spills or a stack), up to "
              f"LOCAL {worst['local']} B, STACK {worst['stack']} B per thread")
    for r in done:
        for p in resource_problems(r, target_spec):
            fail("OUT OF RESOURCES", by_key[r["key"]], p)
    # Spills as a regression check, where they cost: the variants the ops
    # launch (not those widened to i64 here) in 32- and 16-bit dtypes (float64
    # tiles hold twice the registers; its kernels spill and are left so).
    for r in with_regs:
        v = by_key[r["key"]]
        if (r["local"] + r["stack"] > SPILL_LIMIT and not v["synthetic"]
                and not any(a["k"] == "tensor" and a["dtype"] == "float64" for a in v["args"].values())):
            fail("SPILLS", v, f"{r['regs']} registers and {r['local'] + r['stack']} B of local memory per "
                              f"thread (more than {SPILL_LIMIT} B) with {r['threads']} threads")


def _print_summary(variants, info, out, args, total_s):
    by_key = {v["key"]: v for v in variants}
    comp = out["compile"]
    fails = [r for r in comp if not r["ok"]]
    kernels = sorted({kernel_name(v) for v in variants})
    print(f"triton {out['triton']}, torch {out['torch']}, target {target_label(args.target)}")
    print(f"recorded: {info['calls']}, {info['launches']} launches"
          + (f" ({info['skipped']} on fake/traced tensors skipped)" if info["skipped"] else "")
          + f" in {info['record_s']:.1f}s")
    n_wide = sum(1 for v in variants if v["synthetic"])
    print(f"variants: {len(variants)} = {len(variants) - n_wide} recorded + {n_wide} with ints widened to i64, "
          f"of {len(kernels)} kernels")
    if args.verbose or args.list:
        counts = {}
        for v in variants:
            k = kernel_name(v)
            counts[k] = counts.get(k, 0) + 1
        for k in kernels:
            print(f"  {counts[k]:4d}  {k}")
    total_c = sum(r["seconds"] for r in comp)
    print(f"compile: {len(comp) - len(fails)}/{len(comp)} compiled in {out['compile_s']:.1f}s "
          f"by {out['jobs']} process{'es' if out['jobs'] > 1 else ''} "
          f"(mean {total_c / max(1, len(comp)):.2f}s, slowest "
          f"{max((r['seconds'] for r in comp), default=0):.2f}s)")
    manual = [r for r in comp if r["spec"] != "native"]
    if manual and args.spec == "native":
        print(f"  note: {len(manual)} variants specialized by hand: {manual[0]['spec']}")
    if args.verbose:
        for r in sorted(comp, key=lambda r: -r["seconds"])[:5]:
            print(f"  {r['seconds']:5.2f}s  {variant_label(by_key[r['key']])}")
    # Failures grouped by kernel and error: one kernel bug fails many variants.
    groups = {}

    def fail(what, v, error):
        kname = kernel_name(v)
        group = groups.setdefault((what, kname, re.sub(r"\d+", "#", error)), [error, []])
        group[1].append(v)

    for r in fails:
        fail("COMPILE FAIL", by_key[r["key"]], r["error"] + (f"\n{r['traceback']}" if r.get("traceback") else ""))
    _print_resources(comp, by_key, args.target, fail)
    if "mutation" in out:
        mres = out["mutation"]
        bad = [r for r in mres if r["problems"]]
        print(f"mutation: {out['mutation_api']} on {len(mres)} recorded variants in {out['mutation_s']:.1f}s, "
              f"{len(bad)} with problems")
        extra = {}
        for r in mres:
            for n in r.get("extra") or []:
                extra.setdefault(by_key[r["key"]]["kernel"], set()).add(n)
        for k, names in sorted(extra.items()):
            print(f"  note: {k}: reported mutated but never stored to in the recorded launches: "
                  f"{', '.join(sorted(names))}")
        if args.verbose:
            seen = set()
            for r in mres:
                v = by_key[r["key"]]
                line = (f"  {kernel_name(v)}: stored {v['stored']}, "
                        f"reported {r['mutated']}")
                if line not in seen:
                    seen.add(line)
                    print(line)
        for r in bad:
            for p in r["problems"]:
                fail("MUTATION", by_key[r["key"]], p)
    print(f"total: {total_s:.1f}s")
    errors = list(info.get("errors", []))
    missed = info.get("not_launched", [])
    if missed:
        line = f"kernels never launched by the recorded calls, so not checked: {', '.join(missed)}"
        if info.get("not_launched_fails"):
            errors.append(("(coverage)", line + " (add op calls to run_ops)"))
        else:
            print(f"  note: {line}")
    n = len(errors) + sum(len(vs) for _, vs in groups.values())
    if not n:
        print("OK: no failures")
        return 0
    print(f"\nFAILED: {n} failure(s)")
    for label, err in errors:
        print(f"\nOP CALL FAILED under the interpreter: {label}\n  {err}")
    for (what, kname, _), (error, vs) in groups.items():
        print(f"\n{what} {kname}: {len(vs)} variant(s), e.g.")
        for v in vs[:3]:
            print(f"    {variant_label(v)}\n      first seen in: {v['first']}")
        print("  " + error.replace("\n", "\n  "))
    return 1


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = None
    if "--pytest" in argv:
        i = argv.index("--pytest")
        argv, pytest_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="--pytest ARGS...: record while running pytest with ARGS instead of the "
                                       "built-in op calls (it must come last).")
    p.add_argument("--mutation", action="store_true", help="also run Inductor's mutation analysis per variant")
    p.add_argument("--mutation-api", choices=("auto",) + MUTATION_APIS, default="auto",
                   help="which torch entry point to run the analysis through (default: the first this torch has)")
    p.add_argument("--arch", type=int, help="CUDA compute capability to compile for (default 90)")
    p.add_argument("--target", metavar="BACKEND:ARCH",
                   help="cuda:<cc> (the same as --arch) or hip:<gfx arch>, e.g. hip:gfx942 (MI300), compiled "
                        "with Triton's AMD backend down to an hsaco")
    p.add_argument("--exact", action="store_true",
                   help="divisibility by 16 (ints, pointer alignment) is part of a variant")
    p.add_argument("--i64", choices=("some", "all", "none"), default="some",
                   help="variants compiled again with their ints widened to i64: one per kernel, dtypes and "
                        "non-int constexprs (some, the default), one per recorded variant (all), or none")
    p.add_argument("--spec", choices=("native", "manual"), default="native",
                   help="specialize with Triton's binder (default) or by hand")
    p.add_argument("--list", action="store_true", help="print every variant")
    p.add_argument("--record-only", action="store_true", help="record (and --list / --save), compile nothing")
    p.add_argument("--save", metavar="FILE", help="write the recorded variants as JSON")
    p.add_argument("--load", metavar="FILE", help="compile the variants of FILE instead of recording")
    p.add_argument("--cache-dir", metavar="DIR", help="Triton cache to use (default: a fresh temporary one)")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                   help="compile processes, each on a share of the variants (default: one per core)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--worker-in", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.pytest = pytest_args
    if args.target and args.arch is not None:
        p.error("give --arch N or --target, not both (--arch N is --target cuda:N)")
    try:
        args.target = parse_target(args.target or f"cuda:{args.arch or 90}")
    except ValueError as exc:
        p.error(str(exc))
    sys.path.insert(0, ROOT)   # the working tree's fused_attn (python put tools/ on the path)

    if args.worker_in:
        worker(args)
        return 0

    t_start = time.perf_counter()
    if args.load:
        with open(args.load) as f:
            saved = json.load(f)
        variants, info = saved["variants"], saved["info"]
    else:
        # Before torch / triton are imported: the interpreter, and NaN-filled
        # outputs (as the tests run), so every store shows.
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault("FUSED_ATTN_DEBUG_POISON", "1")
        os.chdir(ROOT)
        variants, info = record(args)
    for v in variants:
        v["key"] = variant_key(v, args.exact)
    if args.save:
        with open(args.save, "w") as f:
            json.dump({"variants": variants, "info": info}, f, indent=1)
    if args.list:
        for v in variants:
            print(f"{v['launches']:5d}  {variant_label(v)}" + ("  [i64]" if v["synthetic"] else "")
                  + (f"  stores: {', '.join(v['stored'])}" if args.verbose else ""))
    if args.record_only:
        print(f"recorded: {info['calls']}, {info['launches']} launches in {info['record_s']:.1f}s; "
              f"{len(variants)} variants ({info['widened']} widened to i64)")
        for label, err in info.get("errors", []):
            print(f"OP CALL FAILED under the interpreter: {label}\n  {err}")
        return 1 if info.get("errors") else 0
    if not variants:
        print("error: no Triton launch was recorded", file=sys.stderr)
        return 2

    out = _run_workers(variants, args)
    if out is None:
        return 2
    return _print_summary(variants, info, out, args, time.perf_counter() - t_start)


def _run_workers(variants, args):
    """Pass 2 (and the mutation check) in --jobs child processes, each on every
    jobs-th variant: one compile is single-threaded (MLIR passes, then ptxas or
    the AMD linker). Their results are merged as one worker's would be; the
    times are wall-clock."""
    env = {k: val for k, val in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSED_ATTN_DEBUG_POISON")}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [x for x in [env.get("PYTHONPATH")] if x])
    jobs = max(1, min(args.jobs, len(variants)))
    tmp = tempfile.mkdtemp(prefix="triton_compile_check.")
    try:
        procs = []
        for j in range(jobs):
            # A cache of its own per worker unless one is given (Triton's cache
            # writes are atomic renames, so a shared one is safe too).
            wenv = dict(env, TRITON_CACHE_DIR=args.cache_dir or os.path.join(tmp, f"cache{j}"))
            job_in, job_out = os.path.join(tmp, f"job{j}.json"), os.path.join(tmp, f"out{j}.json")
            with open(job_in, "w") as f:
                json.dump({"variants": variants[j::jobs], "target": args.target, "spec": args.spec,
                           "mutation": args.mutation, "mutation_api": args.mutation_api, "verbose": args.verbose}, f)
            cmd = [sys.executable, os.path.abspath(__file__), "--worker-in", job_in, "--worker-out", job_out]
            procs.append((subprocess.Popen(cmd, env=wenv, cwd=ROOT), job_out))
        outs = []
        for proc, job_out in procs:
            rc = proc.wait()
            if rc != 0 or not os.path.exists(job_out):
                print(f"error: a compile process exited with {rc}", file=sys.stderr)
                outs = None
            elif outs is not None:
                with open(job_out) as f:
                    outs.append(json.load(f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if outs is None:
        return None
    out = {k: outs[0][k] for k in ("torch", "triton")}
    out["jobs"] = jobs
    out["compile"] = [r for o in outs for r in o["compile"]]
    out["compile_s"] = max(o["compile_s"] for o in outs)
    if args.mutation:
        out["mutation_api"] = outs[0]["mutation_api"]
        out["mutation"] = [r for o in outs for r in o["mutation"]]
        out["mutation_s"] = max(o["mutation_s"] for o in outs)
    return out


if __name__ == "__main__":
    sys.exit(main())
