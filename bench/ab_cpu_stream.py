"""A/B of the CPU backend's streaming stores inside whole networks.

The CPU kernels write an output of 8 MiB or more with non-temporal stores
(FUSED_ATTN_CPU_STREAM_BYTES, csrc/cpu/se_kernel.cpp: stream_output): alone,
that keeps the chunk being re-read in cache. In a network the next op (the
residual add) reads that output straight back, and a streamed one comes from
DRAM where an ordinary store could have left it in the last-level cache. The
whole-network runs (bench/models.py) had the converted SE / ECA networks'
inference no faster than eager though their blocks were 1.5x faster; this
asks whether the streaming is why.

Per model (timm, random weights, eval, no_grad, float32, NCHW, batch 8,
224x224): eager, and the converted model with the threshold at each of
--thresholds (bytes; "off" never streams), taking turns in every round so the
VM's drift hits them alike; median ms per forward (quartiles). Every
provider's output is checked against eager's first.

    python -m bench.ab_cpu_stream [--models seresnet50,ecaresnet50d] [--rounds 7] [--out FILE]
"""
import argparse
import copy
import os
import platform
import sys

import torch

import fused_attn

from bench.common import cpu_model, measure_cpu

ENV = "FUSED_ATTN_CPU_STREAM_BYTES"


def threshold_bytes(text):
    return str(1 << 62) if text == "off" else str(int(float(text)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="seresnet50,ecaresnet50d")
    ap.add_argument("--thresholds", default="8388608,33554432,off",
                    help="comma-separated bytes (8388608: the default, 8 MiB) or 'off'")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-seconds", type=float, default=1.5)
    ap.add_argument("--out", help="also write the table to FILE")
    args = ap.parse_args(argv)

    import timm

    torch.manual_seed(0)
    saved = os.environ.get(ENV)
    lines = [f"# bench.ab_cpu_stream on {cpu_model()} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
             f"timm {timm.__version__}, python {platform.python_version()}",
             "",
             f"Whole-network inference, float32 NCHW, batch {args.batch}, {args.image_size}x{args.image_size}; "
             f"median ms per forward (quartiles), {args.rounds} rounds of >= {args.min_seconds} s per provider, "
             "taking turns. fused@T: converted, outputs of T bytes or more streamed (off: never).",
             "",
             "| model | provider | ms | vs eager |",
             "|---|---|---:|---:|"]
    try:
        for name in args.models.split(","):
            model = timm.create_model(name, pretrained=False).eval()
            fused, report = fused_attn.convert(copy.deepcopy(model), inplace=True)
            x = torch.randn(args.batch, 3, args.image_size, args.image_size)
            providers = {"eager": lambda i: model(x)}
            def with_threshold(value):
                def run(i):
                    os.environ[ENV] = value
                    return fused(x)
                return run

            for t in args.thresholds.split(","):
                providers[f"fused@{t}"] = with_threshold(threshold_bytes(t))
            with torch.no_grad():
                out_e = model(x)
                for p in providers.values():  # warm-up, and every provider's output checked
                    torch.testing.assert_close(p(0), out_e, rtol=1e-4, atol=1e-4)
                res = measure_cpu(providers, 1, rounds=args.rounds, min_reps=3, min_seconds=args.min_seconds)
            base = res["eager"]["median_ms"]
            for prov, r in res.items():
                lines.append(f"| {name} | {prov} | {r['median_ms']:.1f} ({r['q1_ms']:.1f}-{r['q3_ms']:.1f}) "
                             f"| {base / r['median_ms']:.3f}x |")
            print("\n".join(lines[-len(res):]), file=sys.stderr, flush=True)
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
