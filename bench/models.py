"""Whole networks: what ``fused_attn.convert`` buys in images/s, and how much
of the attention blocks' cost it removes.

    python -m bench.models                 # --quick: 5 models, inference + train step, eager / converted / no-attention
    python -m bench.models --compile       # also torch.compile of each (default on a GPU; minutes per model on a CPU)
    python -m bench.models --full          # more iterations, torch.compile included
    python -m bench.models --models seresnet50,resnet50_cbam --batch 16 --image-size 160

Models (timm, random weights, nothing downloaded): seresnet50, ecaresnet50d,
efficientnet_b0, mobilenetv3_large_100 and resnet50_cbam (``resnet50`` with
``block_args=dict(attn_layer="cbam")``: 16 CbamModule blocks, which convert()
swaps for fused_attn.nn.CBAM).

Providers, per model and per pass (``inference``: eval mode under no_grad;
``train``: train mode, forward, cross-entropy on random labels, backward,
SGD step):

* ``eager``          the timm model as built,
* ``fused``          ``fused_attn.convert(copy.deepcopy(model))``,
* ``no-attn``        a deep copy with every attention block (those convert()
  swapped or reported as skipped) replaced by ``nn.Identity``: the same
  network without attention. For seresnet50 / resnet50_cbam it is timm's
  resnet50 and for ecaresnet50d timm's resnet50d (checked: same state_dict
  names and shapes); efficientnet_b0 and mobilenetv3 have no plain twin in timm,
* ``compile``, ``compile+fused``, ``compile no-attn``: ``torch.compile`` of each.

overhead removed = (t_eager − t_fused) / (t_eager − t_no_attn), per-iteration
median times; the same for the compiled three. 1.0 means the attention blocks
cost nothing any more, 0 that fusing changed nothing. It is left out when the
attention blocks cost nothing measurable (t_eager <= t_no_attn).

Inside the networks (inference pass, eager and fused): the time per call spent
in the attention blocks themselves, by forward hooks around each block
(BlockTimer), in a separate run of the same calls. A whole network's time
moves by a few percent from run to run on a shared machine; this shows what
the blocks cost where they run (their input just written by the layer
before), which the whole-network difference can hide.

On a GPU: bf16 autocast, channels_last, batch 64 for inference and 32 for
training, timed with CUDA events. On a CPU: fp32, NCHW, batch 8, few
iterations (a ResNet-50 training step takes seconds there). Timing: warm-up
(a compiled provider at least 3 calls: the first compiles), then rounds in
which the providers take turns, so drift in the machine's speed hits them
alike; median and quartiles of the per-iteration times, images/s from the
median. On the side, the converted (and compiled) model's eval output is
compared with the eager model's on the same input (max abs difference).

Results: a table on stdout, and bench/results/<device>/models_<mode>.{json,md},
rewritten after every measured (model, pass) so an interrupted run keeps what
it measured. Progress goes to stderr.
"""
import argparse
import collections
import contextlib
import copy
import datetime
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import fused_attn

from . import common

# name -> (timm architecture, its create_model kwargs, the plain timm model equal to it without attention)
MODELS = {
    "seresnet50": ("seresnet50", {}, "resnet50"),
    "ecaresnet50d": ("ecaresnet50d", {}, "resnet50d"),
    "efficientnet_b0": ("efficientnet_b0", {}, None),
    "mobilenetv3_large_100": ("mobilenetv3_large_100", {}, None),
    "resnet50_cbam": ("resnet50", {"block_args": {"attn_layer": "cbam"}}, "resnet50"),
}
SMOKE_MODELS = ("mobilenetv3_large_100", "resnet50_cbam")
PASSES = ("inference", "train")
EAGER, FUSED, NO_ATTN = "eager", "fused", "no-attn"
COMPILED = {EAGER: "compile", FUSED: "compile+fused", NO_ATTN: "compile no-attn"}

# (warm-up calls, rounds, calls per provider per round) by device kind and mode.
TIMING = {
    ("cpu", "smoke"): (1, 1, 1), ("cpu", "quick"): (2, 3, 2), ("cpu", "full"): (3, 5, 3),
    ("cuda", "smoke"): (2, 1, 2), ("cuda", "quick"): (10, 5, 10), ("cuda", "full"): (20, 10, 20),
}
COMPILED_WARMUP = 3
LR = 1e-3   # small: a few SGD steps on random labels must not blow the weights up (denormals / NaN slow a CPU)


def build(name):
    """The timm model `name` (a key of MODELS), random weights."""
    import timm

    arch, kwargs, _ = MODELS[name]
    return timm.create_model(arch, pretrained=False, **kwargs)


def attention_paths(report):
    """Paths of the modules convert() swapped or reported as attention look-alikes."""
    return list(report.paths) + [s.path for s in report.skipped if s.path]


def strip_attention(model, paths):
    """``model`` with the module at each path replaced by nn.Identity (in place)."""
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, nn.Identity())
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def plain_twin(name, stripped):
    """Whether the attention-free copy is the plain timm model MODELS names
    (same parameter count, same state_dict names and shapes)."""
    import timm

    plain_name = MODELS[name][2]
    if plain_name is None:
        return {"plain": None, "params": n_params(stripped)}
    plain = timm.create_model(plain_name, pretrained=False)

    def layout(m):
        return sorted((k, tuple(v.shape)) for k, v in m.state_dict().items())

    return {"plain": plain_name, "params": n_params(stripped), "plain_params": n_params(plain),
            "same_params": n_params(stripped) == n_params(plain), "same_state_dict": layout(stripped) == layout(plain)}


def convert_counts(report, stripped):
    return {
        "swapped": report.total,
        "by_class": {f"{src} -> {dst}": n for (src, dst), n in sorted(report.swapped.items())},
        "skipped": len(report.skipped),
        "skipped_by_reason": dict(collections.Counter(s.reason for s in report.skipped)),
        "already": report.already,
        "stripped": stripped,
    }


def _quartiles(ts):
    if len(ts) == 1:
        return ts[0], ts[0], ts[0]
    return tuple(statistics.quantiles(ts, n=4, method="inclusive"))


class Clock:
    """Per-call times in seconds: CUDA events on a GPU (no host sync inside a
    burst), perf_counter on a CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def burst(self, fn, n):
        if not self.cuda:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
            return out
        events = []
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in events]

    def wall(self, fn):
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


class BlockTimer:
    """Time spent inside the given submodules of a model, summed per call of
    the model: forward pre/post hooks around each block, perf_counter on a CPU,
    CUDA events on a GPU (recorded on the current stream: the span is the
    GPU's time from the block's first kernel to its last, no host sync inside
    the model). Forward only: the backward of a block is not seen."""

    def __init__(self, model, paths, cuda):
        self.cuda, self.spans, self._open = cuda, [], None
        self.handles = []
        for path in paths:
            block = model.get_submodule(path)
            self.handles.append(block.register_forward_pre_hook(self._start))
            self.handles.append(block.register_forward_hook(self._stop))

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _start(self, module, args):
        self._open = self._now()

    def _stop(self, module, args, out):
        self.spans.append((self._open, self._now()))

    def take(self):
        """Seconds inside the blocks since the last take()."""
        if self.cuda:
            torch.cuda.synchronize()
            total = sum(a.elapsed_time(b) for a, b in self.spans) / 1e3
        else:
            total = sum(b - a for a, b in self.spans)
        self.spans.clear()
        return total

    def remove(self):
        for h in self.handles:
            h.remove()


def time_blocks(providers, models, paths, clock, *, rounds, reps):
    """{name: median and quartiles (ms)} of the time per call of providers[name]
    spent inside the blocks at ``paths`` of models[name] (BlockTimer), the
    providers taking turns in rounds. Run apart from measure(): the hooks
    cost a little, and the models' own times are measured without them."""
    timers = {name: BlockTimer(models[name], paths, clock.cuda) for name in providers}
    times = {name: [] for name in providers}
    try:
        for _ in range(rounds):
            for name, fn in providers.items():
                timers[name].take()
                for _ in range(reps):
                    fn()
                    times[name].append(timers[name].take())
    finally:
        for t in timers.values():
            t.remove()
    return {name: common.quartiles_ms(ts) for name, ts in times.items()}


def measure(providers, clock, *, warmup, rounds, reps, batch, compiled=(), progress=None):
    """{name: median and quartiles (ms), images/s, first call (s)[, peak extra
    memory]} of each step function; providers take turns in rounds."""
    stats = {name: {} for name in providers}
    for name, fn in providers.items():
        if progress:
            progress(f"warm-up {name}" + (" (compiling)" if name in compiled else ""))
        stats[name]["first_call_s"] = clock.wall(fn)
        for _ in range((max(warmup, COMPILED_WARMUP) if name in compiled else warmup) - 1):
            fn()
    clock.sync()
    if clock.cuda:   # memory one step needs beyond what is already allocated (all models' weights)
        for name, fn in providers.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            stats[name]["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    times = {name: [] for name in providers}
    for r in range(rounds):
        if progress:
            progress(f"round {r + 1}/{rounds}")
        for name, fn in providers.items():
            times[name].extend(clock.burst(fn, reps))
    for name, ts in times.items():
        q1, med, q3 = _quartiles(ts)
        stats[name].update(median_ms=med * 1e3, q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, reps=len(ts),
                           images_per_s=batch / med, images_per_s_q1=batch / q3, images_per_s_q3=batch / q1)
    return stats


def overhead_removed(t_attn, t_fused, t_none):
    """(t_attn − t_fused) / (t_attn − t_none), or None when attention costs nothing measurable."""
    if t_attn - t_none <= 0:
        return None
    return (t_attn - t_fused) / (t_attn - t_none)


def _max_abs_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def run_model(name, args, device, clock, timing, write_row, progress):
    """Measure one model (every pass); write_row(row) after each pass."""
    torch.manual_seed(0)
    eager = build(name)
    converted, report = fused_attn.convert(copy.deepcopy(eager))
    paths = attention_paths(report)
    no_attn = strip_attention(copy.deepcopy(eager), paths)
    counts = convert_counts(report, len(paths))
    twin = plain_twin(name, no_attn)
    twin["with_attention_params"] = n_params(eager)

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    nets = {EAGER: eager, FUSED: converted, NO_ATTN: no_attn}
    for m in nets.values():
        m.to(device=device, memory_format=fmt)
    compiled = {}
    if args.compile:
        # Each wrapper shares its module's parameters and train/eval mode.
        compiled = {COMPILED[k]: torch.compile(m) for k, m in nets.items()}
    amp = args.precision == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    def inputs(batch):
        g = torch.Generator(device="cpu").manual_seed(1)
        x = torch.randn(batch, 3, args.image_size, args.image_size, generator=g)
        y = torch.randint(0, 1000, (batch,), generator=g)
        return x.to(device=device, memory_format=fmt), y.to(device)

    # Correctness on the side: eval outputs on the same input.
    x, _ = inputs(args.batch[0])
    for m in nets.values():
        m.eval()
    with torch.no_grad(), autocast():
        ref = eager(x)
        check = {"max_abs_output": ref.float().abs().max().item(), "max_abs_diff": _max_abs_diff(converted(x), ref)}
    del ref

    base = {"model": name, "timm": MODELS[name][0], "timm_kwargs": MODELS[name][1], "image_size": args.image_size,
            "precision": args.precision, "layout": "channels_last" if args.channels_last else "nchw",
            "device": str(device), "convert": counts, "no_attention": twin, "check": check}
    rows = []
    for pass_ in args.passes:
        batch = args.batch[0] if pass_ == "inference" else args.batch[1]
        x, y = inputs(batch)
        progress(f"{pass_}, batch {batch}")
        models = {**nets, **compiled}
        providers = {}
        if pass_ == "inference":
            for m in nets.values():
                m.eval()
            for k, m in models.items():
                def step(m=m):
                    with torch.no_grad(), autocast():
                        m(x)
                providers[k] = step
        else:
            for m in nets.values():
                m.train()
            for k, m in models.items():
                opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9)

                def step(m=m, opt=opt):
                    with autocast():
                        loss = F.cross_entropy(m(x).float(), y)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                providers[k] = step
        warmup, rounds, reps = timing
        stats = measure(providers, clock, warmup=warmup, rounds=rounds, reps=reps, batch=batch,
                        compiled=set(compiled), progress=progress)
        if pass_ == "inference" and compiled:   # compiled eval outputs, while they are in eval mode and warm
            with torch.no_grad(), autocast():
                ref = eager(x)
                for k in (COMPILED[EAGER], COMPILED[FUSED]):
                    check[f"{k}_max_abs_diff"] = _max_abs_diff(compiled[k](x), ref)
            del ref
        t = {k: s["median_ms"] for k, s in stats.items()}
        row = dict(base, **{"pass": pass_, "batch": batch, "providers": stats})
        if pass_ == "inference":   # the blocks' own time inside each network (forward hooks)
            progress("time inside the attention blocks")
            blocks = time_blocks({k: providers[k] for k in (EAGER, FUSED)}, nets, paths, clock,
                                 rounds=rounds, reps=reps)
            row["blocks"] = {k: dict(b, share=b["median_ms"] / t[k]) for k, b in blocks.items()}
        row["speedup_vs_eager"] = {k: t[EAGER] / v for k, v in t.items()}
        row["overhead_removed"] = {"eager": overhead_removed(t[EAGER], t[FUSED], t[NO_ATTN])}
        row["attention_share"] = {"eager": 1 - t[NO_ATTN] / t[EAGER]}
        if compiled:
            c = COMPILED
            row["speedup_vs_compile"] = {k: t[c[EAGER]] / t[k] for k in compiled}
            row["overhead_removed"]["compile"] = overhead_removed(t[c[EAGER]], t[c[FUSED]], t[c[NO_ATTN]])
            row["attention_share"]["compile"] = 1 - t[c[NO_ATTN]] / t[c[EAGER]]
        rows.append(row)
        write_row(row)
    return rows


# ---------------------------------------------------------------------------- reporting

def environment(device, args):
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": device.type, "cpu": _cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
           "torch": torch.__version__, "python": platform.python_version(), "timm": _version("timm"),
           "triton": _version("triton"), "cuda": torch.version.cuda,
           "fused_backend": fused_attn._backends.resolve(device.type),
           "cpu_isa": getattr(fused_attn._extension, "CPU_ISA", None),
           "batch_inference": args.batch[0], "batch_train": args.batch[1], "image_size": args.image_size,
           "precision": args.precision, "layout": "channels_last" if args.channels_last else "nchw",
           "compile": args.compile, "timing": dict(zip(("warmup", "rounds", "reps_per_round"), args.timing, strict=True))}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, sm=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1),
                   extension_cuda=getattr(fused_attn._extension, "CUDA_VERSION", None),
                   extension_archs=getattr(fused_attn._extension, "CUDA_ARCHS", None))
    return env


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _describe(env):
    where = (f"{env['gpu']} (sm {env['sm']}), CUDA {env['cuda']}, triton {env['triton']}" if env["device"] == "cuda"
             else f"{env['cpu']} ({env['threads']} threads)")
    return (f"{where}, torch {env['torch']}, timm {env['timm']}, fused_attn backend `{env['fused_backend']}`; "
            f"{env['precision']}, {env['layout']}, {env['image_size']}×{env['image_size']}, batch "
            f"{env['batch_inference']} (inference) / {env['batch_train']} (train step: cross-entropy, backward, "
            f"SGD); {env['date']}")


def _fmt_frac(v):
    return "—" if v is None else f"{v:.2f}"


def _table_lines(row):
    """(model, pass, provider, images/s, IQR, × eager, overhead removed) per provider."""
    out = []
    for k, s in row["providers"].items():
        removed = ""
        if k == FUSED:
            removed = _fmt_frac(row["overhead_removed"]["eager"])
        elif k == COMPILED[FUSED]:
            removed = _fmt_frac(row["overhead_removed"].get("compile"))
        out.append((row["model"], row["pass"], k, s["images_per_s"], s["images_per_s_q1"], s["images_per_s_q3"],
                    row["speedup_vs_eager"][k], removed))
    return out


def markdown(env, rows):
    lines = [f"Whole models: {_describe(env)}.", "",
             "images/s from the median time per iteration (in brackets: from the quartiles). overhead removed = "
             "(t_eager − t_fused) / (t_eager − t_no-attn), and the same for the compiled three.", "",
             "| model | pass | provider | images/s | × eager | overhead removed |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        for model, pass_, k, ips, lo, hi, speedup, removed in _table_lines(r):
            lines.append(f"| {model} | {pass_} | {k} | {ips:.1f} ({lo:.1f}–{hi:.1f}) | {speedup:.2f}× | {removed} |")
    with_blocks = [r for r in rows if r.get("blocks")]
    if with_blocks:
        lines += ["", "Inside the networks (inference): the time per call spent in the attention blocks, measured by "
                  "forward hooks around each block in a separate run of the same calls (median, quartiles in "
                  "brackets), and its share of the network's median time.", "",
                  "| model | blocks | eager (ms) | fused (ms) | eager / fused | share of the network (eager → fused) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in with_blocks:
            e, f = r["blocks"][EAGER], r["blocks"][FUSED]
            lines.append(f"| {r['model']} | {r['convert']['stripped']} | {e['median_ms']:.3g} "
                         f"({e['q1_ms']:.3g}–{e['q3_ms']:.3g}) | {f['median_ms']:.3g} ({f['q1_ms']:.3g}–{f['q3_ms']:.3g}) | "
                         f"{e['median_ms'] / f['median_ms']:.2f}× | {e['share']:.1%} → {f['share']:.1%} |")
    lines += ["", "| model | blocks fused | skipped | no-attn twin | params (with / without attention) | "
              "fused − eager (max abs, eval) | output max abs |", "|---|---:|---:|---|---:|---:|---:|"]
    seen = set()
    for r in rows:
        if r["model"] in seen:
            continue
        seen.add(r["model"])
        c, tw, ch = r["convert"], r["no_attention"], r["check"]
        twin = "—" if tw["plain"] is None else (
            f"{tw['plain']} ({'same' if tw['same_params'] and tw['same_state_dict'] else 'DIFFERENT'} parameters)")
        reasons = "; ".join(f"{n} × {why}" for why, n in c["skipped_by_reason"].items())
        lines.append(f"| {r['model']} | {c['swapped']} | {c['skipped']}{f' ({reasons})' if reasons else ''} | {twin} | "
                     f"{tw['with_attention_params']:,} / {tw['params']:,} | {ch['max_abs_diff']:.1e} | "
                     f"{ch['max_abs_output']:.2g} |")
    return "\n".join(lines) + "\n"


HEADER = f"{'model':<22} {'pass':<9} {'provider':<16} {'images/s':>9} {'(IQR)':>17} {'× eager':>8} {'removed':>8}"


def print_row(row):
    for model, pass_, k, ips, lo, hi, speedup, removed in _table_lines(row):
        print(f"{model:<22} {pass_:<9} {k:<16} {ips:9.1f} {f'({lo:.1f}–{hi:.1f})':>17} {speedup:7.2f}× "
              f"{removed:>8}", flush=True)
    if row.get("blocks"):
        e, f = row["blocks"][EAGER], row["blocks"][FUSED]
        print(f"{row['model']:<22} {row['pass']:<9} inside the attention blocks: eager {e['median_ms']:.3g} ms "
              f"({e['share']:.1%} of the network), fused {f['median_ms']:.3g} ms ({f['share']:.1%})", flush=True)


# ---------------------------------------------------------------------------- command line

def _batch(text):
    parts = [int(p) for p in text.split(",")]
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise ValueError(text)
    return (parts[0], parts[-1])


def parse_args(argv):
    p = common.parser(__doc__)
    p.add_argument("--models", default=None,
                   help=f"comma-separated, of: {', '.join(MODELS)} (default: all; --smoke: {', '.join(SMOKE_MODELS)})")
    p.add_argument("--passes", default=",".join(PASSES), help="inference,train (default: both)")
    p.add_argument("--batch", type=_batch, default=None,
                   help="N, or N_inference,N_train (default: 64,32 on a GPU, 8 on a CPU, 2 with --smoke)")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (64 with --smoke)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also torch.compile each network (default: on a GPU and with --full; off with --smoke)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="bf16 = torch.autocast (default: bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on a GPU only")
    args = p.parse_args(argv)

    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    gpu = args.device.type == "cuda"
    smoke = args.mode == "smoke"
    args.models = args.models.split(",") if args.models else list(SMOKE_MODELS if smoke else MODELS)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    args.passes = args.passes.split(",")
    if not args.passes or set(args.passes) - set(PASSES):
        p.error(f"--passes takes {', '.join(PASSES)}")
    if args.batch is None:
        args.batch = (2, 2) if smoke else (64, 32) if gpu else (8, 8)
    args.image_size = args.image_size or (64 if smoke else 224)
    if args.compile is None:
        args.compile = not smoke and (gpu or args.mode == "full")
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    if args.channels_last is None:
        args.channels_last = gpu
    args.timing = TIMING[("cuda" if gpu else "cpu", args.mode)]
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    saved = torch.backends.cudnn.benchmark, torch._dynamo.config.cache_size_limit, torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True   # fixed shapes: let cuDNN pick its fastest convolutions
        # each network compiles for eval/no_grad and for train: do not fall back to eager on recompiles
        torch._dynamo.config.cache_size_limit = max(saved[1], 64)
        return _run(args, device)
    finally:
        torch.backends.cudnn.benchmark, torch._dynamo.config.cache_size_limit, threads = saved
        torch.set_num_threads(threads)


def _run(args, device):
    env = environment(device, args)
    out = args.out or os.path.join(common.RESULTS, common.slug(env["gpu"]) if device.type == "cuda"
                                   else common.cpu_folder(env))
    stem = f"models_{args.mode}"
    print(f"# {_describe(env)}")
    print(HEADER)
    clock = Clock(device)
    rows = []
    started = time.perf_counter()

    def write_row(row):
        rows.append(row)
        print_row(row)
        if not args.no_save:
            common.write(out, stem, env, args.mode, rows, markdown)

    for k, name in enumerate(args.models, 1):
        def progress(what, k=k, name=name):
            print(f"[{k}/{len(args.models)} {name}, {time.perf_counter() - started:.0f} s] {what}",
                  file=sys.stderr, flush=True)

        progress("building, converting")
        run_model(name, args, device, clock, args.timing, write_row, progress)
        gc.collect()
        if args.compile:
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"# {len(args.models)} model(s) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not args.no_save:
        print(f"# wrote {os.path.join(out, stem)}.json and .md")
    return rows


if __name__ == "__main__":
    main()
