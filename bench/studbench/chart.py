"""latest.png: the ratios to hitch, p99 latency, idle memory, scaling and resumption as bar
charts (needs matplotlib; without it there is no chart)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .common import IDLE_KIB_TARGET, PINNED_SCENARIOS, RATIO_TARGETS, RESUME_MODES, log
from .context import Bench
from .summary import fmt, median, ratio

COLORS = {"stud": "#d62728", "hitch": "#1f77b4", "haproxy": "#2ca02c"}


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files, or None (logged) where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no chart")
        return None
    return plt


def render_png(path: Path, b: Bench, summary: dict) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    _ratio_panels(axes[0][0], axes[0][1], b.kinds, summary)
    _other_panels(axes, b, summary)
    fig.suptitle(f"stud vs hitch vs HAProxy on loopback ({time.strftime('%Y-%m-%d')})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _bars(ax: Any, kinds: list[str], labels: list[str], values: dict[str, list[float | None]]
          ) -> None:
    """One group of bars per label, one bar per proxy, each with its value on top."""
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        xs = [j + (i - (len(kinds) - 1) / 2) * width for j in range(len(labels))]
        ys = [v if v is not None else 0 for v in values[kind]]
        rects = ax.bar(xs, ys, width, label=kind, color=COLORS.get(kind))
        for rect, v in zip(rects, values[kind], strict=True):
            if v is not None:
                ax.annotate(
                    fmt(v, 2),
                    (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.legend(fontsize=8)


def _ratio_panels(per_cpu_ax: Any, raw_ax: Any, kinds: list[str], summary: dict) -> None:
    """The pinned figures relative to hitch, per proxy CPU-second and raw."""
    scen = [s for s in PINNED_SCENARIOS if s in summary]
    for ax, key, pairs, title in (
        (per_cpu_ax, "per_cpu_median", "rep_ratios_per_cpu",
         "per proxy CPU-second, relative to hitch"),
        (raw_ax, "median", "rep_ratios", "raw rate, relative to hitch"),
    ):
        vals = {  # (stud: as its target, from the back-to-back pairs)
            k: [
                median(summary[s].get(pairs, [])) if k == "stud" and summary[s].get(pairs)
                else ratio(summary[s].get(k, {}).get(key), summary[s].get("hitch", {}).get(key))
                for s in scen
            ]
            for k in kinds
        }
        _bars(ax, kinds, scen, vals)
        for j, s in enumerate(scen):
            if key == "per_cpu_median":
                t = RATIO_TARGETS[s]
                ax.plot([j - 0.45, j + 0.45], [t, t], "k--", lw=1)
        ax.set_title(title + (" (dashed: target)" if key == "per_cpu_median" else ""), fontsize=10)


def _other_panels(axes: Any, b: Bench, summary: dict) -> None:
    kinds, res = b.kinds, b.results
    ax = axes[0][2]
    p99 = summary.get("p99_ms", {})
    _bars(ax, kinds, ["p99 keep-alive"], {k: [p99.get(k, {}).get("median")] for k in kinds})
    ax.set_title("p99 latency, ms (wrk -c 64)", fontsize=10)
    ax = axes[1][0]
    counts = sorted(res.idle, key=int)
    _bars(
        ax,
        kinds,
        [f"{c} conns" for c in counts],
        {k: [res.idle[c].get(k, {}).get("kib_per_conn") for c in counts] for k in kinds},
    )
    ax.axhline(IDLE_KIB_TARGET, color="k", ls="--", lw=1)
    ax.set_title(
        f"idle memory, KiB RSS per connection (dashed: {IDLE_KIB_TARGET:.0f})", fontsize=10
    )
    ax = axes[1][1]
    s1, s2 = summary.get("hs_new_1w", {}), summary.get("hs_new_2w", {})
    _bars(
        ax,
        kinds,
        ["1 worker", "2 workers"],
        {k: [s1.get(k, {}).get("median"), s2.get(k, {}).get("median")] for k in kinds},
    )
    ax.set_title("hs_new, handshakes/s, unpinned", fontsize=10)
    ax = axes[1][2]
    modes = list(RESUME_MODES)
    _bars(
        ax,
        kinds,
        modes,
        {k: [res.resume.get(k, {}).get(m, {}).get("fraction") for m in modes] for k in kinds},
    )
    ax.set_title("resumed fraction across 2 workers", fontsize=10)
