"""The results on the console and in latest.json and latest.md (latest.png: chart.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from .chart import render_png
from .common import log
from .context import Bench
from .cores_summary import cores_md, cores_summary, cores_table
from .fleet_summary import fleet_notes, fleet_rows, fleet_summary
from .load_chart import render_load_png
from .load_summary import load_table
from .meta import versions
from .mtls_summary import mtls_table
from .summary import fmt, summarize, targets_and_table


def report(b: Bench, meta: dict[str, Any]) -> int:
    """Prints the table, writes latest.json/.md/.png; the exit status."""
    out = b.args.out
    res = b.results
    meta["versions"] = versions(b)
    meta["commands"] = b.commands
    meta["elapsed_s"] = round(time.monotonic() - b.t_start, 1)
    summary = summarize(res)
    targets, rows = targets_and_table(b, summary)
    mtls_targets, mtls_rows = mtls_table(b, summary)
    cores = cores_summary(b) if res.cores.get("measurable") else {}
    cores_targets, cores_rows = cores_table(b, cores)
    load_targets, load_rows = load_table(b)
    targets = targets + mtls_targets + cores_targets + load_targets
    rows = rows + mtls_rows + cores_rows + fleet_rows(b) + load_rows
    print_results(b, rows, targets)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "meta": meta,
        "summary": summary,
        "targets": targets,
        "idle_mem": res.idle,
        "resume": res.resume,
        "paired": res.paired,
        "aa": res.aa,
        "mtls": {"side_by_side": res.mtls, "not_measured": res.mtls_na},
        "fleet": {**res.fleet, "summary": fleet_summary(b)} if res.fleet else {},
        "conns_many": res.many,
        "mem_creep": res.creep,
        "flood": res.flood,
        "cores": {**res.cores, "summary": cores} if cores else res.cores,
        "idle_capped": res.idle_capped,
        "stud_close_reasons": res.close_reasons,
        "stud_warnings": res.notes,
        "runs": res.runs,
        "problems": res.problems,
    }
    (out / "latest.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "latest.md").write_text(render_md(b, rows, targets, meta, cores_md(b, cores)))
    png = render_png(out / "latest.png", b, summary)
    render_load_png(out / "load.png", b)
    log(
        f"wrote {out}/latest.json, latest.md{', latest.png' if png else ''} "
        f"in {meta['elapsed_s']:.0f}s"
    )
    have_numbers = {k for per in res.runs.values() for k in per} | {
        k for per in res.idle.values() for k in per
    } | {k for per in res.fleet.get("cpu", {}).values() for k in per} | set(
        res.cores.get("runs", {})) | {
        k for per in res.many.values() if isinstance(per, dict) for k in per
    } | set(res.creep.get("runs", {})) | set(res.flood.get("runs", {}))
    if not have_numbers and b.args.scenarios == {"cores"} and res.cores.get("measurable") is False:
        return 0  # the one answer this host can give, and the report says so
    if "stud" in b.kinds:
        return 0 if "stud" in have_numbers else 1
    return 0 if have_numbers else 1


def print_results(b: Bench, rows: list[list[str]], targets: list[dict]) -> None:
    print()
    print(render_table(b.kinds, rows))
    print()
    for line in target_lines(targets):
        print("  " + line)
    if b.results.close_reasons:
        top = sorted(b.results.close_reasons.items(), key=lambda kv: -kv[1])[:8]
        print(
            "stud close reasons (its per-connection log): " + ", ".join(f"{r} x{n}" for r, n in top)
        )
    print()
    if b.results.problems:
        print("Problems seen:")
        for prob in b.results.problems:
            print("  - " + prob.replace("\n", "\n    "))


def table_head(kinds: list[str]) -> list[str]:
    per_kind = [f"{k} median [per CPU-s]" for k in kinds]
    return ["scenario", "unit", *per_kind, "stud/hitch raw", "stud/hitch per CPU-s", "target", ""]


def render_table(kinds: list[str], rows: list[list[str]]) -> str:
    head = table_head(kinds)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def target_lines(targets: list[dict]) -> list[str]:
    out = []
    for t in targets:
        m = t["measured"]
        shown = fmt(m, 2) if isinstance(m, float) else "-" if m is None else str(m)
        out.append(
            f"{t['verdict']:<4}  {t['name']:<20} {shown:>6}  target {t['target']}  ({t['basis']})"
        )
    return out


def render_md(b: Bench, rows: list[list[str]], targets: list[dict], meta: dict,
              cores: list[str]) -> str:
    head = table_head(b.kinds)
    out = [
        *_md_header(meta),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        "## Targets",
        "",
        "```",
        *target_lines(targets),
        "```",
        "",
        *cores,
        "## Problems seen",
        "",
        *([f"- {p}".replace("\n", "\n  ") for p in b.results.problems] or ["- none"]),
        "",
        "## Notes",
        "",
        *_md_notes(b),
        "",
        "## Versions",
        "",
        *[f"- {k}: `{v}`" for k, v in meta["versions"].items()],
        "",
        "## Commands (ports and paths vary per run)",
        "",
        *[f"- {k}: `{v}`" for k, v in meta["commands"].items()],
        "",
    ]
    return "\n".join(out)


def _md_header(meta: dict) -> list[str]:
    cfg = meta["config"]
    return [
        f"# stud benchmark ({'smoke' if meta['smoke'] else 'full'} run, {meta['date']})",
        "",
        f"Command: `{meta['command']}` ({meta['elapsed_s']:.0f} s)  ",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['nproc']} CPUs, "
        f"kernel {meta['machine']['kernel']}, fd limit {cfg['nofile']}  ",
        f"Repetitions: {cfg['reps']} x {cfg['duration']} s per figure, interleaved (stud, hitch, "
        "haproxy, stud, ...); medians. Clients: "
        + ", ".join(f"{k} {v}" for k, v in meta["tools"].items())
        + ".  ",
        "Placement: proxy pinned to CPU 0 with 1 worker; load generator and nginx backend on "
        "CPU 1. `per CPU-s` = events (or MiB) per second of proxy CPU time (utime+stime of all "
        "its processes during the measured phase). Scaling and resumption rows (and fleet's "
        "across 3 instances): unpinned. "
        "`cores`: see its section. See bench/README.md.",
    ]


def _md_notes(b: Bench) -> list[str]:
    reasons = sorted(b.results.close_reasons.items(), key=lambda kv: -kv[1])
    notes = [f"- stud printed: {n}" for n in b.results.notes]
    notes += [f"- hs_mtls, {k}: n/a: {why}" for k, why in b.results.mtls_na.items()]
    notes += fleet_notes(b)
    if reasons:
        notes.append(
            "- stud's per-connection close reasons: "
            + ", ".join(f"`{r}` x{n}" for r, n in reasons)
        )
    return notes
