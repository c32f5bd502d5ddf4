"""From the raw results to medians, stud/hitch ratios and the targets' verdicts, with the
table's rows (report.py and chart.py lay them out)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .common import (
    ALL_CPUS,
    IDLE_BIG,
    IDLE_KIB_TARGET,
    NO_SHARED_CACHE,
    PINNED_SCENARIOS,
    RATIO_TARGETS,
    RESUME_MODES,
    SCALING_TARGET,
    UNITS,
)
from .context import Bench, Results


def median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def rep_ratios(runs: dict[str, list[dict]], key: str) -> list[float]:
    """stud/hitch of key in each repetition that has both (run back to back)."""
    hitch = {r["rep"]: r.get(key) for r in runs.get("hitch", []) if "rep" in r}
    return [r[key] / hitch[r["rep"]] for r in runs.get("stud", [])
            if r.get(key) and hitch.get(r.get("rep"))]


def summarize(results: Results) -> dict:
    """Per scenario and proxy: the medians; per scenario: stud/hitch in each repetition."""
    summary: dict[str, Any] = {}
    for scenario, per_kind in results.runs.items():
        summary[scenario] = {
            kind: {
                "median": median([r["value"] for r in runs]),
                "per_cpu_median": median([r.get("per_cpu") for r in runs]),
                "proxy_util_median": median([r.get("proxy_util") for r in runs]),
                "n": len(runs),
            }
            for kind, runs in per_kind.items()
        }
        for key, name in (("value", "rep_ratios"), ("per_cpu", "rep_ratios_per_cpu")):
            if ratios := rep_ratios(per_kind, key):
                summary[scenario][name] = ratios
    return summary


@dataclass
class _Table:
    kinds: list[str]
    targets: list[dict] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)

    def target(self, name: str, measured: Any, goal: str, ok: bool | None, basis: str) -> str:
        self.targets.append(
            dict(name=name, measured=measured, target=goal, verdict=verdict(ok), basis=basis)
        )
        return verdict(ok)


def targets_and_table(b: Bench, summary: dict) -> tuple[list[dict], list[list[str]]]:
    """The targets (stud vs hitch, same run) and the printed table's rows."""
    t = _Table(b.kinds)
    for scenario in (*PINNED_SCENARIOS[:4], "p99_ms", "bulk"):
        if s := summary.get(scenario):
            _pinned_row(t, scenario, s, b.results.paired.get(scenario))
    _idle_rows(t, b.results)
    if "stud" in t.kinds and "idle_mem" in b.args.scenarios and IDLE_BIG in b.args.idle_counts:
        _idle_big_target(t, b.results, b.args.nofile)
    s1, s2 = summary.get("hs_new_1w", {}), summary.get("hs_new_2w", {})
    if s1 or s2:
        _scaling_row(t, s1, s2, b.results)
    _info_rows(t, b.results)
    return t.targets, t.rows


def _pinned_row(t: _Table, scenario: str, s: dict, side: list[float] | None) -> None:
    cells = []
    for kind in t.kinds:
        k = s.get(kind)
        if not k:
            cells.append("-")
        elif scenario == "p99_ms":
            cells.append(fmt(k["median"], 2))
        else:
            cells.append(f"{fmt(k['median'])} [{fmt(k['per_cpu_median'])}]")
    stud, hitch = s.get("stud", {}), s.get("hitch", {})
    # The ratio: the median of the repetitions' ratios (see pinned_phase), else (a run
    # without pairs) the ratio of the medians, which the basis also gives.
    per_of_medians = ratio(stud.get("per_cpu_median"), hitch.get("per_cpu_median"))
    raw = median(s.get("rep_ratios", [])) or ratio(stud.get("median"), hitch.get("median"))
    per = median(s.get("rep_ratios_per_cpu", [])) or per_of_medians
    pairs = s.get("rep_ratios" if scenario == "p99_ms" else "rep_ratios_per_cpu", [])
    of_reps = f"median of {len(pairs)} back-to-back pairs: " + ", ".join(
        f"{r:.2f}" for r in pairs) if pairs else "ratio of medians"
    if side:  # the handshake figures: side by side, where the host's drift cancels (aa_phase)
        of_reps = (f"side by side, median of {len(side)}: " + ", ".join(
            f"{r:.3f}" for r in side) + f"; in turn: {fmt(per, 2)}, {of_reps}")
        per = statistics.median(side)
    if scenario == "p99_ms":
        goal = "<= hitch's"
        ok = None if raw is None else raw <= 1.0
        basis = (f"stud p99 / hitch p99, {of_reps}; medians {fmt(stud.get('median'), 2)}"
                 f" vs {fmt(hitch.get('median'), 2)} ms")
        v = t.target(scenario, raw, goal, ok, basis)
    else:
        goal = f">= {RATIO_TARGETS[scenario]:.1f}"
        ok = None if per is None else per >= RATIO_TARGETS[scenario]
        basis = (f"stud/hitch per proxy CPU-second, {of_reps}; ratio of medians "
                 f"{fmt(per_of_medians, 2)}")
        v = t.target(scenario, per, goal, ok, basis)
    per_s = ("-" if scenario == "p99_ms" else
             f"{per:.3f} side by side" if side else fmt(per, 2))
    t.rows.append([scenario, UNITS[scenario][0], *cells, fmt(raw, 2), per_s, goal, v])


def _idle_rows(t: _Table, results: Results) -> None:
    wanted_of = {got: wanted for wanted, got in results.idle_capped.items()}
    for count, per_kind in sorted(results.idle.items(), key=lambda kv: int(kv[0])):
        cells = [fmt(per_kind[k]["kib_per_conn"]) if k in per_kind else "-" for k in t.kinds]
        stud = per_kind.get("stud", {}).get("kib_per_conn")
        hitch = per_kind.get("hitch", {}).get("kib_per_conn")
        goal = f"stud <= {IDLE_KIB_TARGET:.0f}"
        ok = None if stud is None else stud <= IDLE_KIB_TARGET
        label = f"idle_mem {count}"
        if int(count) in wanted_of:
            label += f" (for {wanted_of[int(count)]}: fd limit)"
        v = t.target(f"idle_mem_{count}", stud, goal, ok, "stud KiB of RSS per idle connection")
        t.rows.append([label, "KiB/conn", *cells, fmt(ratio(stud, hitch), 2), "-", goal, v])


def _idle_big_target(t: _Table, results: Results, nofile: int) -> None:
    """IDLE_BIG connections on one worker, or why that is not measurable here."""
    goal = f"{IDLE_BIG} idle, no errors"
    if IDLE_BIG in results.idle_capped:
        got = results.idle_capped[IDLE_BIG]
        run = results.idle.get(str(got), {}).get("stud")
        held = "cleanly" if run and run["clean"] else "with errors"
        note = (
            f"not measurable: fd limit {nofile} allows {got} proxied connections "
            f"per process; {got} held {held}"
        )
        t.target("idle_20k_one_worker", note, goal, None, "stud, 1 worker")
    else:
        big = results.idle.get(str(IDLE_BIG), {}).get("stud")
        ok = None if big is None else bool(big["clean"])
        t.target("idle_20k_one_worker", big and big["established"], goal, ok, "stud, 1 worker")


def _scaling_row(t: _Table, s1: dict, s2: dict, results: Results) -> None:
    cells = []
    for kind in t.kinds:
        one, two = s1.get(kind, {}).get("median"), s2.get(kind, {}).get("median")
        cells.append(f"{fmt(one)} -> {fmt(two)} ({fmt(ratio(two, one), 2)}x)")
    sr = ratio(s2.get("stud", {}).get("median"), s1.get("stud", {}).get("median"))
    hr = ratio(s2.get("hitch", {}).get("median"), s1.get("hitch", {}).get("median"))
    goal = f"stud >= {SCALING_TARGET}x"
    ok = None if sr is None else sr >= SCALING_TARGET
    basis = "stud hs/s, 2 vs 1 worker, unpinned"
    ceiling = scaling_ceiling(results, "stud", s1.get("stud", {}).get("median"))
    if ceiling:
        basis += (
            f"; this box's ceiling ~{ceiling:.2f}x: proxy + generator + backend "
            f"CPU per handshake vs {len(ALL_CPUS)} CPUs"
        )
        if ceiling < SCALING_TARGET and not ok:  # no proxy could meet it here
            ok = None
            basis = "not measurable here: " + basis
    v = t.target("hs_new_2w_vs_1w", sr, goal, ok, basis)
    t.rows.append(["hs_new 1w -> 2w", "hs/s", *cells, fmt(ratio(sr, hr), 2), "-", goal, v])


def scaling_ceiling(results: Results, kind: str, rate_1w: float | None) -> float | None:
    """Best 2w/1w ratio this machine allows: all CPUs' worth of handshakes, given what one
    handshake costs the proxy, the load generator and the backend together (2w runs)."""
    per_event = [
        (r["proxy_cpu_s"] + r["client_cpu_s"] + r["backend_cpu_s"]) / r["events"]
        for r in results.runs.get("hs_new_2w", {}).get(kind, [])
        if r["events"]
    ]
    cost = median(per_event)
    return ratio(len(ALL_CPUS) / cost, rate_1w) if cost else None


def _info_rows(t: _Table, results: Results) -> None:
    """Rows without a target: the side-by-side ratios, A/A and resumption."""
    kinds = t.kinds
    for scenario, ratios in results.paired.items():
        cells = [f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})"
                 if k == "stud" else "" for k in kinds]
        t.rows.append([f"{scenario} (paired)", "ratio", *cells, "-",
                       fmt(statistics.median(ratios), 2), "(info)", ""])
    for method, ratios in results.aa.items():  # hitch against itself: each method's spread
        cells = [f"{statistics.median(ratios):.3f} ({min(ratios):.3f} .. {max(ratios):.3f})"
                 if k == "hitch" else "" for k in kinds]
        name = "p99_ms (sequential)" if method.startswith("p99") else f"hs_new_rsa ({method})"
        t.rows.append([f"A/A {name} hitch/hitch", "ratio", *cells, "-", "-", "(info)", ""])
    for mode in RESUME_MODES if results.resume else ():
        cells = []
        for kind in kinds:
            r = results.resume.get(kind, {}).get(mode)
            cells.append(f"{r['resumed']}/{r['reconnects']}" if r else "-")
        t.rows.append([f"resume {mode} (2w)", "resumed", *cells, "-", "-", "(info)", ""])
        r = results.resume.get(NO_SHARED_CACHE, {}).get(mode)
        if r:
            cells = [f"{r['resumed']}/{r['reconnects']}" if k == "stud" else "" for k in kinds]
            t.rows.append([f"resume {mode} (2w, {NO_SHARED_CACHE})", "resumed", *cells, "-", "-",
                           "(info)", ""])
