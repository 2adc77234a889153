"""Pictures of the load sweep: throughput and p99 latency against clients, one line per contender,
one panel per applier state. Rendered with Debian's python3-matplotlib (Agg, SVG).

A failed point stays on its line as a red cross: at what its successful calls achieved, or on the
bottom edge when none succeeded. Nothing is dropped silently.
"""
import os

STYLE = {  # contender prefix -> (colour, marker)
    "plain INSERT": ("#555555", "o"),
    "atx_log, commit": ("#1f5fbf", "s"),
    "atx_log, rollback": ("#6fa8ff", "D"),
    "atx_exec": ("#2a9d3a", "^"),
    "dblink": ("#e07b00", "v"),
    "pg_background result": ("#b8002e", "P"),
    "pg_background detach": ("#8a3ab9", "X"),
}


def style(name):
    for prefix, s in STYLE.items():
        if name.startswith(prefix):
            return s
    return ("#000000", ".")


def render(results, outdir):
    """Writes throughput.svg and p99.svg into outdir; returns their paths (or raises ImportError)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "pg_atx-bench"  # stable ids: a rerun changes only what changed
    os.makedirs(outdir, exist_ok=True)
    m, c = results["machine"], results["config"]
    sub = (f"{results['mode']} run, {c['seconds_per_point']} s per point, {m['server']}, {m['cpus']} CPUs, "
           f"pg_atx {m['commit']}, {m['date']}" + (f"; {m['note']}" if m.get("note") else ""))
    paths = []
    for key, ylabel, fname in (("calls_per_s", "calls/s (log scale)", "throughput.svg"),
                               ("p99_ms", "p99 latency, ms (log scale)", "p99.svg")):
        states = [s for s in ("stopped", "running") if results["sweep"].get(s)]
        fig, axes = plt.subplots(1, len(states), figsize=(6.2 * len(states), 5.2), sharey=True, squeeze=False)
        lo = min_positive(results, key)
        for ax, state in zip(axes[0], states):
            for name, points in results["sweep"][state].items():
                colour, marker = style(name)
                dashed = "max_worker_processes=8" in name
                xs = sorted(int(k) for k in points)
                ys = [val(points[str(x)], key, lo) for x in xs]
                ax.plot(xs, ys, color=colour, marker=marker, linestyle="--" if dashed else "-",
                        linewidth=1.4, markersize=5, label=name)
                bad = [(x, y) for x, y in zip(xs, ys) if not points[str(x)]["ok"]]
                if bad:
                    ax.scatter([b[0] for b in bad], [b[1] for b in bad], marker="x", s=90, color="red",
                               linewidths=2.2, zorder=5)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(c["clients"])
            ax.set_xticklabels([str(x) for x in c["clients"]])
            ax.set_xlabel("clients")
            ax.set_title("applier stopped (caller's own cost)" if state == "stopped"
                         else "applier running (what users live with)", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][0].set_ylim(bottom=lo / 1.6)
        seen = {}
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
        order = list(STYLE)
        labels = sorted(seen, key=lambda n: ([i for i, p in enumerate(order) if n.startswith(p)] or [99])[0])
        handles = [seen[lab] for lab in labels]
        handles.append(plt.Line2D([], [], marker="x", color="red", linestyle="", markersize=9, markeredgewidth=2.2))
        labels.append("failed: clients aborted (value of the calls that succeeded; bottom edge if none)")
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
        fig.suptitle(("Throughput" if key == "calls_per_s" else "p99 latency") + " against clients", fontsize=12)
        fig.text(0.5, 0.905, sub, ha="center", fontsize=7.5, color="#444444")
        fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) + 1) // 2), 1, 0.9))
        path = os.path.join(outdir, fname)
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        paths.append(path)
    return paths


def val(p, key, lo):
    v = p.get(key)
    return v if v else lo / 1.5


def min_positive(results, key):
    vs = [p[key] for s in results["sweep"].values() for pts in s.values() for p in pts.values() if p.get(key)]
    return min(vs) if vs else 1.0


if __name__ == "__main__":  # bench_plots.py RESULTS.json OUTDIR: for an interpreter that has matplotlib
    import json
    import sys
    with open(sys.argv[1]) as f:
        print("\n".join(render(json.load(f), sys.argv[2])))
