"""load.png: conns_many (memory per connection, the busiest worker's share), mem_creep (RSS
as connections go by) and flood (the legitimate clients' p99 under each attack), for the
proxies that ran them (needs matplotlib)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .chart import COLORS, pyplot
from .context import Bench
from .flood import ATTACKS, LIMITED
from .load_summary import flood_p99s
from .summary import median

SETUP_COLORS = {**COLORS, LIMITED: "#ff9896"}


def render_load_png(path: Path, b: Bench) -> bool:
    res = b.results
    if not (res.many or res.creep.get("runs") or res.flood.get("runs")):
        return False
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 4, figsize=(20, 5))
    _many(axes[0], axes[1], b)
    _creep(axes[2], b)
    _flood(axes[3], b)
    fig.suptitle(f"stud vs hitch: many connections, memory creep, floods "
                 f"({time.strftime('%Y-%m-%d')})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _grouped(ax: Any, labels: list[str], series: dict[str, list[float | None]]) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(labels))]
        ys = [v or 0 for v in values]
        ax.bar(xs, ys, width, label=name, color=SETUP_COLORS.get(name))
        for x, v in zip(xs, values, strict=True):
            if v:
                ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=8)
    ax.legend(fontsize=8)


def _many(ax_kib: Any, ax_share: Any, b: Bench) -> None:
    configs = {c: v for c, v in b.results.many.items() if isinstance(v, dict) and "stud" in v}
    kinds = [k for k in b.kinds if any(k in v for v in configs.values())]
    kib = {k: [median([r.get("kib_per_conn") for r in configs[c].get(k, [])]) for c in configs]
           for k in kinds}
    share = {k: [max((r.get("busiest_over_mean") or 0 for r in configs[c].get(k, [])),
                     default=None) for c in configs] for k in kinds}
    _grouped(ax_kib, list(configs), kib)
    ax_kib.set_title("conns_many: RSS per connection (KiB)")
    ax_kib.axhline(18, color="grey", linestyle="--", linewidth=1)
    _grouped(ax_share, list(configs), share)
    ax_share.set_title("conns_many: busiest worker / mean")
    ax_share.axhline(1.25, color="grey", linestyle="--", linewidth=1)
    ax_share.set_ylim(bottom=0.9)


def _creep(ax: Any, b: Bench) -> None:
    for kind, run in b.results.creep.get("runs", {}).items():
        xs = [n / 1000 for n, _ in run["series"]]
        ys = [rss / 1024 for _, rss in run["series"]]
        ax.plot(xs, ys, marker=".", label=kind, color=SETUP_COLORS.get(kind))
    ax.set_title("mem_creep: RSS (MiB) after N thousand connections")
    ax.set_xlabel("connections opened and closed (thousands)")
    ax.legend(fontsize=8)


def _flood(ax: Any, b: Bench) -> None:
    runs = b.results.flood.get("runs", {})
    series = {setup: [flood_p99s(per.get(a, []), per.get("none", []))[0] if per.get(a) else None
                      for a in ATTACKS] for setup, per in runs.items()}
    if series:
        _grouped(ax, list(ATTACKS), series)
        ax.set_yscale("log")
    ax.set_title("flood: legitimate keep-alive p99 (ms)")
