"""What the benchmark scripts share: the command line, where results go, and
writing them (JSON with every number, and a markdown table)."""
import argparse
import json
import os

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
