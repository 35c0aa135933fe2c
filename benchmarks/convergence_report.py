"""Tables and plots of the convergence records (`convergence_regime.*`).

    python benchmarks/convergence.py --report      # or: python benchmarks/convergence_report.py FILE.json

Writes <stem>.md (speed-ups, final FID, assignment gains), one
<stem>_<size>px_<family>.png per image size and family (FID against
training steps, one panel per sampler-step count, seed-mean line and
min-max band) and <stem>_speedup_vs_gain.png.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import convergence_analysis as analysis  # noqa: E402

ARM_ORDER = ("vanilla", "linear", "knn2", "knn4", "knn8")


def _order(key):
    size, family, arm, noise, sampling = key
    return (size, family, ARM_ORDER.index(arm), noise != "standard", sampling)


def _fmt_speedup(summary):
    # A median that falls on a censored seed is itself only a bound.
    prefix = ""
    if 2 * summary["censored"] >= summary["seeds"] and summary["kinds"] in ("<", ">"):
        prefix = summary["kinds"]
    text = (
        f"{prefix}{summary['median']:.2f} [{summary['min']:.2f}, {summary['max']:.2f}]"
    )
    if summary["censored"]:
        text += f" ({summary['censored']}/{summary['seeds']} {summary['kinds']})"
    return text


def markdown(records):
    heads = analysis.headers(records)
    table = analysis.speedups(records)
    summaries = {key: analysis.summarize(rows) for key, rows in table.items()}
    gains = analysis.assignment_gains(records)
    means = analysis.mean_curves(records)
    samplings = sorted({k[4] for k in means})
    lines = ["# Convergence in the papers' regime: digits at 8x8, 16x16, 32x32", ""]
    for h in heads:
        lines.append(
            f"- run {h.get('invocation')}: `{h['command']}` on {h['machine']}, {h['date']}"
        )
    if heads:
        config = heads[-1]["config"]
        lines += [
            "",
            "Configuration (last run): "
            + "; ".join(
                f"{k}: {v}" for k, v in config.items() if k not in ("cells", "seeds")
            ),
        ]
    lines += [
        "",
        "Every arm of a seed trains the same network from the same initial weights "
        "on the same batches; FID of EMA samples (same sampling seed for every arm) "
        "at each sampler-step count. Lower FID is better.",
        "",
        "## Speed-up over vanilla (computed)",
        "",
        "speed-up = training steps vanilla needs to reach its own final FID / steps "
        "the arm needs to reach it, per training seed (same seed pair), median "
        "[min, max] over seeds. `<`: censored (the arm never reached vanilla's final "
        "FID, so the value is an upper bound); `>`: the arm was there at its first "
        f"evaluation (a lower bound). The goal is >= {analysis.GOAL:g}. 'final ratio': "
        "arm's final FID / vanilla's, median over seeds (below 1: the arm ends better). "
        "Noise 'matched': KNN arms sampled from the Gaussian matched to their "
        "training noise; the speed-up is still against vanilla sampled from N(0, I).",
        "",
    ]
    header = (
        "| size | family | arm | noise | gain | "
        + " | ".join(f"speed-up @{s} steps" for s in samplings)
        + " | "
        + " | ".join(f"final ratio @{s}" for s in samplings)
        + " |"
    )
    lines += [header, "|" + "---|" * (5 + 2 * len(samplings))]
    cells = sorted({k[:4] for k in summaries}, key=lambda k: _order(k + (0,)))
    goal_cells = []
    for cell in cells:
        row = [
            f"{cell[0]}",
            cell[1],
            cell[2],
            cell[3],
            f"{100 * gains.get(cell[:3], 0):.1f}%",
        ]
        ratios = []
        for s in samplings:
            summary = summaries.get(cell + (s,))
            if summary is None:
                row.append("")
                ratios.append("")
                continue
            row.append(_fmt_speedup(summary))
            ratios.append(
                f"{summary['final_ratio']:.2f} [{summary['final_ratio_min']:.2f}, "
                f"{summary['final_ratio_max']:.2f}]"
            )
            if summary["median"] >= analysis.GOAL and not summary["kinds"].count("<"):
                goal_cells.append(cell + (s,))
        lines.append("| " + " | ".join(row + ratios) + " |")
    lines += [
        "",
        "Compact (the README's table): median speed-up over seeds at 5 / 10 / 20 / 50 "
        "sampler steps, `<` where the median is a censored bound; N(0, I) sampling.",
        "",
        "| size | family | arm | gain | seeds | "
        + " | ".join(f"@{s}" for s in samplings)
        + " |",
        "|" + "---|" * (5 + len(samplings)),
    ]
    for cell in cells:
        if cell[3] != "standard":
            continue
        found = [summaries.get(cell + (s,)) for s in samplings]
        seeds = max((f["seeds"] for f in found if f), default=0)
        values = []
        for f in found:
            if f is None:
                values.append("")
                continue
            prefix = (
                f["kinds"]
                if 2 * f["censored"] >= f["seeds"] and f["kinds"] in ("<", ">")
                else ""
            )
            values.append(f"{prefix}{f['median']:.2f}")
        lines.append(
            f"| {cell[0]}x{cell[0]} | {cell[1]} | {cell[2]} | "
            f"{100 * gains.get(cell[:3], 0):.1f}% | {seeds} | "
            + " | ".join(values)
            + " |"
        )
    lines += [
        "",
        "Cells reaching the goal (median speed-up >= 2, no censored seed): "
        + (
            ", ".join(f"{c[0]}px {c[1]} {c[2]} ({c[3]}) @{c[4]}" for c in goal_cells)
            or "none"
        )
        + ".",
        "",
        "## Final FID (geometric mean over seeds [min, max])",
        "",
        "| size | family | arm | noise | seeds | "
        + " | ".join(f"@{s}" for s in samplings)
        + " |",
        "|" + "---|" * (5 + len(samplings)),
    ]
    for cell in sorted({k[:4] for k in means}, key=lambda k: _order(k + (0,))):
        row = [str(cell[0]), cell[1], cell[2], cell[3]]
        seeds = ""
        values = []
        for s in samplings:
            m = means.get(cell + (s,))
            if m is None:
                values.append("")
                continue
            seeds = str(m[4])
            values.append(f"{m[1][-1]:.2f} [{m[2][-1]:.2f}, {m[3][-1]:.2f}]")
        lines.append("| " + " | ".join(row + [seeds] + values) + " |")
    lines += ["", "## FID against training steps (geometric mean over seeds)", ""]
    for size, family in sorted({k[:2] for k in means}):
        for s in samplings:
            keys = sorted(
                [k for k in means if k[:2] == (size, family) and k[4] == s], key=_order
            )
            if not keys:
                continue
            steps = means[keys[0]][0]
            lines += [
                f"{size}x{size}, {family}, {s} sampler steps:",
                "",
                "| step | "
                + " | ".join(
                    k[2] + ("" if k[3] == "standard" else f" ({k[3]})") for k in keys
                )
                + " |",
                "|" + "---|" * (1 + len(keys)),
            ]
            for i, step in enumerate(steps):
                cells_text = []
                for k in keys:
                    m = means[k]
                    cells_text.append(f"{m[1][i]:.2f}" if i < len(m[1]) else "")
                lines.append(f"| {step:.0f} | " + " | ".join(cells_text) + " |")
            lines.append("")
    lines += [
        "## Per-seed speed-ups",
        "",
        "| size | family | arm | noise | sampler steps | seed | vanilla steps | arm steps | speed-up | final ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(table, key=_order):
        for r in table[key]:
            lines.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {r['seed']} | "
                f"{r['vanilla_steps']:.0f} | {r['arm_steps']:.0f} | {r['kind']}{r['speedup']:.2f} | "
                f"{r['final_ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plots(records, output, stem):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = analysis.mean_curves(records)
    samplings = sorted({k[4] for k in means})
    paths = []
    colors = {
        "vanilla": "k",
        "linear": "tab:blue",
        "knn2": "tab:olive",
        "knn4": "tab:orange",
        "knn8": "tab:red",
    }
    for size, family in sorted({k[:2] for k in means}):
        fig, axes = plt.subplots(
            1, len(samplings), figsize=(4 * len(samplings), 3.4), squeeze=False
        )
        for ax, s in zip(axes[0], samplings):
            for key in sorted(
                [k for k in means if k[:2] == (size, family) and k[4] == s], key=_order
            ):
                steps, mean, low, high, n = means[key]
                label = (
                    key[2]
                    + ("" if key[3] == "standard" else f" ({key[3]})")
                    + f", {n} seeds"
                )
                style = "-" if key[3] == "standard" else "--"
                ax.plot(steps, mean, style, color=colors[key[2]], label=label)
                ax.fill_between(steps, low, high, color=colors[key[2]], alpha=0.12)
            ax.set_yscale("log")
            ax.set_title(f"{size}x{size} {family}, {s} sampler steps")
            ax.set_xlabel("training step")
            ax.set_ylabel("FID")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(output, f"{stem}_{size}px_{family}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    table = analysis.speedups(records)
    gains = analysis.assignment_gains(records)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    markers = {"ddim": "o", "flow": "s"}
    cmap = plt.get_cmap("viridis")
    for key, rows in sorted(table.items(), key=lambda kv: _order(kv[0])):
        if key[3] != "standard":
            continue
        summary = analysis.summarize(rows)
        gain = 100 * gains.get(key[:3], 0.0)
        color = cmap(samplings.index(key[4]) / max(1, len(samplings) - 1))
        ax.errorbar(
            gain,
            summary["median"],
            yerr=[
                [summary["median"] - summary["min"]],
                [summary["max"] - summary["median"]],
            ],
            fmt=markers[key[1]],
            color=color,
            alpha=0.8,
            ms=5,
            mfc="none" if summary["censored"] else color,
        )
    for s in samplings:
        ax.plot(
            [],
            [],
            "o",
            color=cmap(samplings.index(s) / max(1, len(samplings) - 1)),
            label=f"{s} sampler steps",
        )
    ax.plot([], [], "ko", label="ddim")
    ax.plot([], [], "ks", label="flow")
    ax.plot([], [], "ko", mfc="none", label="censored seeds")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(analysis.GOAL, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("assignment gain (%)")
    ax.set_ylabel("speed-up (median over seeds, range)")
    ax.set_title("speed-up against assignment gain, every cell")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(output, f"{stem}_speedup_vs_gain.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
    return paths


def write(records, output, stem):
    path = os.path.join(output, stem + ".md")
    with open(path, "w") as f:
        f.write(markdown(records))
    paths = [path] + plots(records, output, stem)
    print("wrote " + ", ".join(paths))
    return paths


if __name__ == "__main__":
    import json

    source = sys.argv[1]
    with open(source) as f:
        records = json.load(f)
    write(
        records,
        os.path.dirname(source) or ".",
        os.path.splitext(os.path.basename(source))[0],
    )
