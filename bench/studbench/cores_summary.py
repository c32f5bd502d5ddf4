"""cores in the report: per worker count the medians, the scaling (N workers against 1) and
stud/hitch per proxy CPU-second, with their targets; and its section of latest.md."""

from __future__ import annotations

from typing import Any

from .common import (
    CORES_COMMAND,
    CORES_RATIO_TARGET,
    CORES_SCALING_TARGET,
    CORES_TARGET_MAX,
)
from .context import Bench
from .summary import fmt, median, ratio, rep_ratios, verdict


def cores_summary(b: Bench) -> dict[str, Any]:
    """Per proxy and worker count: medians, the scaling in each repetition (against the same
    repetition's 1-worker run, seconds apart) and why the load side may have set the rate;
    per worker count: stud/hitch in each repetition, raw and per proxy CPU-second."""
    runs = b.results.cores.get("runs", {})
    out: dict[str, Any] = {"proxies": {}, "stud/hitch": {}, "stud/hitch per CPU-s": {}}
    for kind, per_n in runs.items():
        one = {r["rep"]: r["value"] for r in per_n.get("1", [])}
        out["proxies"][kind] = {n: _medians(rs, one) for n, rs in per_n.items()}
    for n in sorted({n for per_n in runs.values() for n in per_n}, key=int):
        pairs = {kind: per_n.get(n, []) for kind, per_n in runs.items()}
        for key, name in (("value", "stud/hitch"), ("per_cpu", "stud/hitch per CPU-s")):
            if ratios := rep_ratios(pairs, key):
                out[name][n] = ratios
    return out


def _medians(rs: list[dict], one: dict[int, float]) -> dict[str, Any]:
    scaling = [r["value"] / one[r["rep"]] for r in rs if one.get(r["rep"])]
    return {
        "median": median([r["value"] for r in rs]),
        "per_cpu_median": median([r.get("per_cpu") for r in rs]),
        "proxy_cpus_used_median": median([r.get("proxy_util") for r in rs]),
        "scaling": scaling,
        "scaling_median": median(scaling),
        "load_bound": [r["load_bound"] for r in rs if r.get("load_bound")],
        "n": len(rs),
    }


def cores_table(b: Bench, cs: dict[str, Any]) -> tuple[list[dict], list[list[str]]]:
    """(targets, rows) for cores; nothing if it did not run."""
    rec = b.results.cores
    if not rec:
        return [], []
    if not rec["measurable"]:
        goal = (f"stud >= {CORES_SCALING_TARGET} x N, stud/hitch per CPU-s >= "
                f"{CORES_RATIO_TARGET:.1f}")
        shown = f"not measurable on this {rec['cpus']}-CPU host"
        target = dict(name="cores", measured=shown, target=goal, verdict=verdict(None),
                      basis=f"{rec['reason']}; on a bigger host: {CORES_COMMAND}")
        cells = [shown if i == 0 else "" for i in range(len(b.kinds))]
        return [target], [["cores", "hs/s", *cells, "-", "-", goal, "n/a"]]
    targets: list[dict] = []
    rows = [_row(b, cs, int(n), targets) for n in _counts(cs)]
    return targets, rows


def _counts(cs: dict[str, Any]) -> list[str]:
    return sorted({n for per_n in cs["proxies"].values() for n in per_n}, key=int)


def _row(b: Bench, cs: dict[str, Any], n: int, targets: list[dict]) -> list[str]:
    """One worker count: the cells, and its targets appended to targets."""
    key = str(n)
    got = {kind: cs["proxies"][kind].get(key, {}) for kind in cs["proxies"]}
    cells = [f"{fmt(g['median'])} [{fmt(g['per_cpu_median'])}] {fmt(g['scaling_median'], 2)}x"
             if (g := got.get(kind)) else "-" for kind in b.kinds]
    stud, hitch = got.get("stud", {}), got.get("hitch", {})
    raw = median(cs["stud/hitch"].get(key, [])) or ratio(stud.get("median"),
                                                         hitch.get("median"))
    mine = [_per_core_target(n, cs, stud, hitch)]
    if 2 <= n <= CORES_TARGET_MAX and stud.get("scaling_median") is not None:
        mine.append(_scaling_target(n, stud, hitch))
    targets.extend(mine)
    mine_shown = mine[::-1]  # scaling first, as the target column reads
    goal = ", ".join(t["target"] for t in mine_shown)
    verdicts = [t["verdict"] for t in mine_shown]
    v = verdicts[0] if len(set(verdicts)) == 1 else ", ".join(verdicts)
    per = mine[0]["measured"]
    return [f"cores {n}w", "hs/s", *cells, fmt(raw, 2), fmt(per, 2), goal, v]


def _per_core_target(n: int, cs: dict[str, Any], stud: dict, hitch: dict) -> dict:
    pairs = cs["stud/hitch per CPU-s"].get(str(n), [])
    of_medians = ratio(stud.get("per_cpu_median"), hitch.get("per_cpu_median"))
    measured = median(pairs) or of_medians
    of_reps = (f"median of {len(pairs)} back-to-back pairs: " + ", ".join(f"{r:.2f}" for r in pairs)
               if pairs else "no back-to-back pair")
    basis = (f"stud/hitch handshakes per proxy CPU-second, {n} worker{'s' * (n > 1)} on "
             f"{n} core{'s' * (n > 1)}, {of_reps}; ratio of medians {fmt(of_medians, 2)}")
    ok = None if measured is None else measured >= CORES_RATIO_TARGET
    return dict(name=f"cores_{n}w_per_core", measured=measured,
                target=f">= {CORES_RATIO_TARGET:.1f}", verdict=verdict(ok), basis=basis)


def _scaling_target(n: int, stud: dict, hitch: dict) -> dict:
    """stud's rate with n workers over its rate with 1; where it falls short and the load
    side was saturated in most of its runs, the proxy was not what set the rate: n/a."""
    goal = CORES_SCALING_TARGET * n
    measured = stud["scaling_median"]
    ok: bool | None = measured >= goal
    basis = (f"stud hs/s, {n} workers on {n} cores against 1 worker, per repetition: "
             + ", ".join(f"{s:.2f}" for s in stud["scaling"])
             + f"; stud used {fmt(stud.get('proxy_cpus_used_median'), 2)} of {n} CPUs; "
             f"hitch {fmt(hitch.get('scaling_median'), 2)}x")
    bound = stud.get("load_bound", [])
    if not ok and 2 * len(bound) >= stud["n"]:
        ok = None
        basis = f"not measurable here: load side saturated ({bound[0]}); " + basis
    return dict(name=f"cores_{n}w_scaling", measured=measured,
                target=f"stud >= {goal:.1f}x", verdict=verdict(ok), basis=basis)


def cores_md(b: Bench, cs: dict[str, Any]) -> list[str]:
    """latest.md's section on cores; nothing if it did not run."""
    rec = b.results.cores
    if not rec:
        return []
    out = ["## Every core (`cores`)", ""]
    if not rec["measurable"]:
        return [*out, f"Not measurable on this {rec['cpus']}-CPU host: {rec['reason']}. On a "
                "bigger host (16 CPUs for 1 to 8 workers) the same command measures it:", "",
                f"    {CORES_COMMAND}", ""]
    p = rec["plan"]
    kinds = [k for k in b.kinds if k in cs["proxies"]]
    head = ["workers", *[f"{k} hs/s [per CPU-s]" for k in kinds],
            *[f"{k} x 1 worker" for k in kinds], *[f"{k} CPUs used" for k in kinds],
            "stud/hitch per CPU-s"]
    rows = [_md_row(cs, kinds, n) for n in _counts(cs)]
    out += [
        f"Full TLS 1.3 handshakes (as `hs_new`) with 1 to {p['workers'][-1]} workers on "
        f"{rec['cpus']} CPUs: the proxy on CPUs {p['proxy']} (N workers on the first N), "
        f"one tlsload per CPU ({b.args.hs_conc} slots per worker, split between them) and the "
        f"backend on CPUs {p['load']}. Medians of {b.args.reps} x {b.args.duration} s, "
        "interleaved; `x 1 worker`: the rate over the same repetition's 1-worker rate; `CPUs "
        "used`: the proxy's CPU-seconds per second. Command: "
        f"`{CORES_COMMAND}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]
    notes = [f"- {kind}, {n} workers: load side saturated in {len(g['load_bound'])} of "
             f"{g['n']} runs ({g['load_bound'][0]})"
             for kind in kinds for n, g in cs["proxies"][kind].items() if g["load_bound"]]
    if rec.get("proxy_smt_siblings"):
        notes.append(f"- proxy CPUs that are threads of one core: {rec['proxy_smt_siblings']}")
    return out + notes + [""] * bool(notes)


def _md_row(cs: dict[str, Any], kinds: list[str], n: str) -> list[str]:
    got = [cs["proxies"][k].get(n) for k in kinds]
    rate = [f"{fmt(g['median'])} [{fmt(g['per_cpu_median'])}]" if g else "-" for g in got]
    scale = [f"{fmt(g['scaling_median'], 2)} ({fmt(ratio(g['scaling_median'], int(n)), 2)} N)"
             if g else "-" for g in got]
    used = [fmt(g["proxy_cpus_used_median"], 2) if g else "-" for g in got]
    per = cs["stud/hitch per CPU-s"].get(n)
    return [n, *rate, *scale, *used, fmt(median(per), 3) if per else "-"]
