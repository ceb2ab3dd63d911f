"""The plot of a bench.ops run: per op and pass, the fused backends' speedup
over eager and over torch.compile, and every provider's share of the copy
bandwidth, shape by shape.

    python -m bench.plot bench/results/<device>/ops_quick.json   # redraws ops_quick.png beside it
"""
import json
import sys


def _label(r):
    label = f"{r['N']}×{r['C']}×{r['H']}×{r['W']}"
    extras = [r["dtype"].replace("float", "fp").replace("bfp16", "bf16"), "cl" if r["layout"] == "channels_last" else ""]
    return label + " " + " ".join(e for e in extras if e)


def plot(path, env, rows):
    """Write the PNG at `path` (matplotlib's Agg backend: no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in rows:
        if "providers" in r:
            groups.setdefault((r["op"], r["pass"]), []).append(r)
    if not groups:
        return None
    width = max(8.0, min(40.0, 2.0 + 0.28 * max(len(rs) for rs in groups.values())))
    fig, axes = plt.subplots(len(groups), 2, figsize=(2 * width, 3.6 * len(groups)), squeeze=False)
    device = env.get("gpu") if env.get("device") == "cuda" else f"{env.get('cpu')} ({env.get('threads')} threads)"
    fig.suptitle(f"bench.ops — {device}, torch {env.get('torch')}, {env.get('date', '')[:10]}")
    for ((op, pass_name), rs), (ax_speed, ax_bw) in zip(groups.items(), axes, strict=True):
        xs = list(range(len(rs)))
        labels = [_label(r) for r in rs]
        fused = []
        for r in rs:
            fused += [b for b in r.get("fused", []) if b not in fused]
        compiled = []
        for r in rs:
            compiled += [n for n in r["providers"] if n.startswith("compile") and n not in compiled]

        for b in fused:
            for base, marker in [("eager", "o"), *[(c, "s") for c in compiled]]:
                ys = [r["providers"][base]["median_ms"] / r["providers"][b]["median_ms"]
                      if b in r["providers"] and base in r["providers"] else float("nan") for r in rs]
                ax_speed.plot(xs, ys, marker=marker, linestyle="-" if base == "eager" else "--", label=f"{b} vs {base}")
        ax_speed.axhline(1.0, color="grey", linewidth=0.8)
        ax_speed.set_ylabel("speedup (×)")
        ax_speed.set_title(f"{op} {pass_name}: fused speedup")

        for name in ["eager", *compiled, *fused]:
            ys = [r["providers"][name]["pct_copy_bw"] if name in r["providers"] else float("nan") for r in rs]
            ax_bw.plot(xs, ys, marker="o" if name in fused else ".", label=name)
        ax_bw.axhline(100.0, color="grey", linewidth=0.8)
        ax_bw.set_ylabel("% of copy bandwidth")
        ax_bw.set_title(f"{op} {pass_name}: effective bandwidth on the floor bytes (copy = 100%)")
        for ax in (ax_speed, ax_bw):
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
            ax.set_ylim(bottom=0)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (3.6 * len(groups))))  # room for the title
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    for src in argv:
        with open(src) as f:
            data = json.load(f)
        print(plot(src.rsplit(".", 1)[0] + ".png", data["environment"], data["rows"]))


if __name__ == "__main__":
    main()
