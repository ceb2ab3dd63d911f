"""Regenerate the README's benchmark section from committed result files.

    python -m bench.readme_table        # rewrites the block between the markers

Every figure in the README comes from a file under bench/results/.
"""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


TABLES = [
    ("se_quick.json", "SE, ResNet-50 sites, N=8, float32",
     "floor = `out.copy_(x)` + the excitation's matmuls alone", "C×H×W"),
    ("eca_quick.json", "ECA, ECA-ResNet-50 sites (k = 5, 5, 5, 7), N=8, float32",
     "floor = `out.copy_(x)`", "C×H×W (k)"),
]


def section():
    results = os.path.join(ROOT, "bench", "results")
    parts = []
    for device in sorted(os.listdir(results)):
        for name, title, floor, shape in TABLES:
            path = os.path.join(results, device, name)
            if not os.path.isfile(path):
                continue
            with open(path) as f:
                data = json.load(f)
            env = data["environment"]
            rel = os.path.relpath(path, ROOT)
            parts.append(
                f"{title} — {env['cpu']}, {env['threads']} threads, torch {env['torch']}, "
                f"backend `{env['backend']}` ({env['cpu_isa']}), {env['date'][:10]} ([`{rel}`]({rel})). "
                f"Medians in ms; {floor}.\n")
            parts.append(f"| pass | {shape} | layout | eager | fused | floor | fused / floor | vs eager |")
            parts.append("|---|---|---|---:|---:|---:|---:|---:|")
            for r in data["rows"]:
                k = f" ({r['k']})" if "k" in r else ""
                parts.append(f"| {r['pass']} | {r['C']}×{r['H']}×{r['W']}{k} | {r['layout']} | "
                             f"{r['eager']['median_ms']:.2f} | {r['fused']['median_ms']:.2f} | {r['floor_ms']:.2f} | "
                             f"{r['fused_vs_floor']:.2f}× | {r['speedup_vs_eager']:.2f}× |")
            parts.append("")
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
