"""Regenerate the README's benchmark section from committed result files.

    python -m bench.readme_table        # rewrites the block between the markers

Every figure in the README comes from a bench/results/<device>/ops_quick.json
written by ``python -m bench.ops --quick``: per device, per op, one table.
"""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
SOURCE = "ops_quick.json"


def _where(env):
    if env["device"] == "cuda":
        return f"{env['gpu']} (sm {env['sm']}), torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}"
    return (f"{env['cpu']}, {env['threads']} threads, torch {env['torch']}, "
            f"fused backend `cpu` ({env['cpu_isa']})")


def _conditions(rows):
    """What all rows share (stated once in the title) and what varies (a column)."""
    ns, dtypes = sorted({r["N"] for r in rows}), sorted({r["dtype"] for r in rows})
    shared = []
    if len(ns) == 1:
        shared.append(f"N={ns[0]}")
    if len(dtypes) == 1:
        shared.append(dtypes[0])
    return shared, len(ns) > 1, len(dtypes) > 1


def _legend(env, rel):
    modes = env.get("compile_modes") or []
    compiled = ("the fastest of " + ", ".join(modes)) if len(modes) > 1 else f"{modes[0] if modes else 'default'} mode"
    return [f"{_where(env)}, {env['date'][:10]} ([`{rel}`]({rel})). Medians in ms; compile = `torch.compile` "
            f"({compiled}); fused = the fastest fused backend; copy = `out.copy_(x)`; % copy BW = the fused op's "
            "bandwidth on the floor bytes (fwd 2|x|: read x, write y; fwd+bwd 5|x|: also read dy and x, write dx) "
            "as a share of the copy's "
            "(2|x|); vs eager / vs compile = fused's speedup.", ""]


def _table(op, title, rows):
    shared, n_varies, dtype_varies = _conditions(rows)
    lines = [f"**{title}** (`--op {op}`){', ' if shared else ''}{', '.join(shared)}:", ""]
    shape_head = "N×C×H×W" if n_varies else "C×H×W"
    dtype_head = " dtype |" if dtype_varies else ""
    lines.append(f"| pass | {shape_head} | settings |{dtype_head} layout | eager | compile | fused | copy | "
                 "% copy BW | vs eager | vs compile |")
    lines.append("|---|---|---|" + ("---|" if dtype_varies else "") + "---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        p, best, comp = r["providers"], r.get("best_fused"), r.get("best_compile")
        shape = f"{r['N']}×" * n_varies + f"{r['C']}×{r['H']}×{r['W']}"
        settings = " ".join(f"{k}={v}" for k, v in r.get("args", {}).items())
        dtype = f" {r['dtype']} |" if dtype_varies else ""

        def ms(name):
            return f"{p[name]['median_ms']:.3g}" if name in p else "—"

        def ratio(key):
            return f"{r[key]:.2f}×" if key in r else "—"

        fused = f"{ms(best)} ({best})" if best else "—"
        pct = f"{r['fused_pct_copy_bw']:.0f}%" if "fused_pct_copy_bw" in r else "—"
        lines.append(f"| {r['pass']} | {shape} | {settings} |{dtype} {r['layout']} | {ms('eager')} | "
                     f"{ms(comp) if comp else '—'} | {fused} | {ms('copy')} | {pct} | "
                     f"{ratio('speedup_vs_eager')} | {ratio('speedup_vs_compile')} |")
    lines.append("")
    return lines


def section(root=ROOT):
    """The markdown between the markers, from every <root>/bench/results/*/ops_quick.json."""
    results = os.path.join(root, "bench", "results")
    parts = []
    for device in sorted(os.listdir(results)) if os.path.isdir(results) else []:
        path = os.path.join(results, device, SOURCE)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            data = json.load(f)
        env, rel = data["environment"], os.path.relpath(path, root)
        parts += _legend(env, rel)
        by_op = {}
        for r in data["rows"]:
            if "providers" in r:
                by_op.setdefault(r["op"], []).append(r)
        for op, rows in by_op.items():
            parts += _table(op, env.get("ops", {}).get(op, op), rows)
    if not parts:
        parts = ["No results committed yet: `python -m bench.ops --quick` writes "
                 f"`bench/results/<device>/{SOURCE}`, then `python -m bench.readme_table`.", ""]
    return "\n".join(parts)


def main():
    readme = os.path.join(ROOT, "README.md")
    with open(readme) as f:
        text = f.read()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(readme, "w") as f:
        f.write(f"{head}{BEGIN}\n{section()}{END}{tail}")


if __name__ == "__main__":
    main()
