"""What the benchmark scripts share: the command line, where results go,
writing them (JSON with every number, and a markdown table), the machine's
description, and timing providers in turn (CPU wall clock, CUDA events)."""
import argparse
import contextlib
import datetime
import glob
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parser(doc, *, smoke=True):
    """--quick (default) / --full [/ --smoke], --out, --no-save."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="the default")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    if smoke:
        mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                          help="a tiny grid, briefly timed: checks the benchmark runs (the tests use it)")
    p.add_argument("--out", default=None, help="results folder (default bench/results/<device>)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.set_defaults(mode="quick")
    return p


def slug(name):
    """A folder name for a device: lower case, runs of other characters as '-'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def cpu_folder(env):
    return f"cpu-{slug(env['cpu'])}-{env['threads']}t"


def write(out, stem, env, mode, rows, markdown):
    """bench/results/<device>/<stem>.json and .md (out: the folder)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump({"environment": env, "mode": mode, "rows": rows}, f, indent=1)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(markdown(env, rows))
    return os.path.join(out, stem)


# --- Shared by the benchmarks that time providers in turn (bench.ops) -------

def quartiles_ms(seconds):
    """{median_ms, q1_ms, q3_ms, reps} of a list of durations in seconds."""
    q = statistics.quantiles(seconds, n=4, method="inclusive") if len(seconds) > 1 else [seconds[0]] * 3
    return {"median_ms": q[1] * 1e3, "q1_ms": q[0] * 1e3, "q3_ms": q[2] * 1e3, "reps": len(seconds)}


def measure_cpu(providers, n_inputs, *, rounds, min_reps, min_seconds):
    """{name: quartiles_ms} of each fn(i) (wall clock), i rotating over
    range(n_inputs). The warm-up (compilation included) happens before; here
    the providers take turns, a burst of at least min_reps calls and
    min_seconds each per round, so drift in the machine's speed (other
    tenants of a VM) hits them alike."""
    times = {name: [] for name in providers}
    i = 0
    for _ in range(rounds):
        for name, fn in providers.items():
            start = time.perf_counter()
            reps = 0
            while reps < min_reps or time.perf_counter() - start < min_seconds:
                t0 = time.perf_counter()
                fn(i % n_inputs)
                times[name].append(time.perf_counter() - t0)
                i += 1
                reps += 1
    return {name: quartiles_ms(ts) for name, ts in times.items()}


def measure_cuda(providers, n_inputs, *, rounds, reps):
    """{name: quartiles_ms} of each fn(i) on the current CUDA device, timed
    with CUDA events around each call, i rotating over range(n_inputs); the
    providers take turns, `reps` calls each per round."""
    import torch
    times = {name: [] for name in providers}
    torch.cuda.synchronize()
    i = 0
    for _ in range(rounds):
        for name, fn in providers.items():
            events = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(i % n_inputs)
                end.record()
                events.append((start, end))
                i += 1
            torch.cuda.synchronize()
            times[name].extend(s.elapsed_time(e) * 1e-3 for s, e in events)
    return {name: quartiles_ms(ts) for name, ts in times.items()}


@contextlib.contextmanager
def restored_env(*keys):
    """The A/B scripts set their knobs (environment variables) per call; this
    puts each back as it was, or unset, on the way out."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_ab(out_dir, stem, title, lines, cuda):
    """An A/B table under a heading naming the device (and its L2), torch and
    the CUDA backend's build: printed, and written to out_dir/stem.md when
    out_dir is set."""
    import torch

    import fused_attn

    dev = torch.cuda.get_device_name(0) if cuda else "cpu (smoke)"
    l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) if cuda else 0
    l2 = f", L2 {l2_bytes / 2**20:.0f} MiB" if l2_bytes else ""
    head = (f"# {title}, µs (median), {dev}{l2}, torch {torch.__version__}, "
            f"fused_attn backends: {fused_attn.backends()['cuda']}\n\n")
    if out_dir:
        with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
            f.write(head + "\n".join(lines) + "\n")
    print(head.strip())


def measure_ab(providers, cuda, *, rounds, reps):
    """The A/B scripts' timing: measure_cuda of each fn(0) on a GPU; without one,
    three wall-clock calls each (a smoke run of the plumbing, not a measurement)."""
    if cuda:
        return measure_cuda(providers, 1, rounds=rounds, reps=reps)
    res = {}
    for name, fn in providers.items():
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn(0)
            ts.append(time.perf_counter() - t0)
        res[name] = quartiles_ms(ts)
    return res


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def last_level_cache_bytes():
    """The largest CPU cache (Linux sysfs), or None."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            pass
    return max(sizes) if sizes else None


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device):
    """What a result needs to be read later: the machine, the versions, and
    which fused_attn backends could run (and why not). `device`: "cpu" or
    "cuda". The keys of cpu_folder() ("cpu", "threads") are always there."""
    import torch
    import fused_attn
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device, "cpu": cpu_model(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
        "llc_bytes": last_level_cache_bytes(),
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": package_version("triton"), "timm": package_version("timm"),
        "fused_attn_backends": {name: str(s) for name, s in fused_attn.backends().items()},
        "cpu_isa": fused_attn._extension.CPU_ISA,
        "extension_cuda": fused_attn._extension.CUDA_VERSION,
        "extension_archs": fused_attn._extension.CUDA_ARCHS,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(gpu=props.name, sm=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1), l2_bytes=getattr(props, "L2_cache_size", None))
        env["device_name"] = props.name
    else:
        env["device_name"] = env["cpu"]
    return env


def device_folder(env):
    """bench/results/<this>: cpu_folder(env) on a CPU, the GPU's name on a GPU."""
    return slug(env["gpu"]) if env["device"] == "cuda" else cpu_folder(env)


class Progress:
    """A one-line 'k/n, elapsed, ETA' on stderr (rewritten in place on a terminal)."""

    def __init__(self, total, stream=None):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def step(self, what=""):
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done)
        line = f"# [{self.done}/{self.total}] {_clock(elapsed)} elapsed, ~{_clock(left)} left {what}".rstrip()
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if self.done == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
