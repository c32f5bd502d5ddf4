"""fleet in the table: resumption across three instances, and the CPU per connection (a new
session, a resumption from the local cache, a resumption from Redis) with stud's
Redis/local ratio per repetition."""

from __future__ import annotations

from typing import Any

from .common import RESUME_MODES
from .context import Bench
from .fleet import INSTANCES, SHARES_KEYS
from .summary import fmt, median, ratio

CASE_NAMES = {
    "full": "new session (full handshake)",
    "local": "resumed from the local cache",
    "redis": "resumed from Redis",
}


def fleet_summary(b: Bench) -> dict[str, Any]:
    """Medians of the CPU per connection (seconds) per case and proxy, and stud's Redis/local
    ratio in each repetition."""
    cpu = b.results.fleet.get("cpu", {})
    out: dict[str, Any] = {
        case: {kind: median([r.get("cpu_per_conn_s") for r in runs])
               for kind, runs in per_kind.items()}
        for case, per_kind in cpu.items()
    }
    local = {r["rep"]: r.get("cpu_per_conn_s") for r in cpu.get("local", {}).get("stud", [])}
    reps = [ratio(r.get("cpu_per_conn_s"), local.get(r["rep"]))
            for r in cpu.get("redis", {}).get("stud", [])]
    out["redis_over_local"] = [x for x in reps if x is not None]
    return out


def fleet_rows(b: Bench) -> list[list[str]]:
    """The table's rows (no targets: information)."""
    fleet = b.results.fleet
    if not fleet.get("resumption") and not fleet.get("cpu"):
        return []
    rows = []
    across = fleet.get("resumption", {})
    for mode in RESUME_MODES if across else ():
        cells = []
        for kind in b.kinds:
            r = across.get(kind, {}).get(mode)
            cell = f"{r['resumed']}/{r['reconnects']}" if r else "-"
            cells.append(cell + (" (own keys)" if r and kind not in SHARES_KEYS else ""))
        rows.append([f"fleet {mode} ({INSTANCES} instances)", "resumed", *cells, "-", "-",
                     "(info)", ""])
    s = fleet_summary(b)
    for case in (c for c in CASE_NAMES if c in s):
        cells = [_cpu_cell(b, case, kind, s) for kind in b.kinds]
        # as the other rows: stud/hitch per proxy CPU-second = hitch's CPU per event / stud's
        per = ratio(s[case].get("hitch"), s[case].get("stud"))
        rows.append([f"fleet TLS 1.2 session ID, {CASE_NAMES[case]}", "CPU-us/conn", *cells,
                     "-", fmt(per, 2), "(info)", ""])
    if reps := s["redis_over_local"]:
        cells = [f"{median(reps):.2f} ({', '.join(f'{r:.2f}' for r in reps)})"
                 if k == "stud" else "" for k in b.kinds]
        rows.append(["fleet CPU per resumption, Redis / local cache", "ratio", *cells, "-",
                     "-", "(info)", ""])
    return rows


def _cpu_cell(b: Bench, case: str, kind: str, s: dict) -> str:
    runs = b.results.fleet["cpu"][case].get(kind, [])
    if not runs:
        return "n/a" if case == "redis" else "-"
    per = s[case].get(kind)
    cell = fmt(per * 1e6 if per else None, 0)
    if case != "full":
        resumed, events = sum(r["resumed"] for r in runs), sum(r["events"] for r in runs)
        cell += f" ({resumed}/{events} resumed)" if resumed < events else ""
    return cell


def fleet_notes(b: Bench) -> list[str]:
    """For latest.md's notes."""
    fleet = b.results.fleet
    notes = [f"- fleet: {n}" for n in fleet.get("notes", [])]
    if store := fleet.get("store"):
        notes.append(f"- fleet: stud B's session-store counters {store['B']}; the redis case "
                     f"made {store['redis case']}")
    if runs := fleet.get("cpu", {}).get("local", {}).get("stud"):
        rate = median([r["value"] for r in runs])
        notes.append(f"- fleet CPU rows: TLS 1.2 without tickets, ECDSA P-256, 1 worker on "
                     f"CPU 0, connections at ~{fmt(rate, 0)}/s, median of {len(runs)} "
                     "repetitions (see bench/README.md)")
    return notes
