"""hs_mtls in the table: the in-turn medians, stud against each other proxy side by side
(with mTLS: the target; without: for reference) and each proxy's mTLS handshakes per
CPU-second relative to its plain ones, side by side."""

from __future__ import annotations

import statistics

from .common import MTLS_TARGET
from .context import Bench
from .summary import fmt, median, ratio, verdict


def mtls_table(b: Bench, summary: dict) -> tuple[list[dict], list[list[str]]]:
    """(targets, rows) for hs_mtls; nothing if it did not run."""
    res, kinds = b.results, b.kinds
    s = summary.get("hs_mtls", {})
    if not s and not res.mtls:
        return [], []
    cells = [
        f"{fmt(s[k]['median'])} [{fmt(s[k]['per_cpu_median'])}]" if k in s
        else "n/a" if k in res.mtls_na else "-"
        for k in kinds
    ]
    rows = [["hs_mtls", "hs/s", *cells, "-", "-", "(info)", ""]]
    targets = []
    for other in [k for k in kinds if k != "stud"]:
        side = res.mtls.get(f"hs_mtls stud/{other}")
        plain = res.mtls.get(f"hs_new stud/{other}")
        if side:
            targets.append(_target(b, summary, other, side, plain))
            t = targets[-1]
            rows.append([f"hs_mtls stud/{other} (paired)", "ratio", *_stud_cell(kinds, side),
                         "-", "-", t["target"], t["verdict"]])
        if plain:
            rows.append([f"hs_new stud/{other} (paired)", "ratio", *_stud_cell(kinds, plain),
                         "-", "-", "(info)", ""])
    if any(res.mtls.get(f"{k} hs_mtls/hs_new") for k in kinds):
        cells = [_cost_cell(b, summary, k) for k in kinds]
        rows.append(["hs_mtls/hs_new (paired)", "ratio", *cells, "-", "-", "(info)", ""])
    return targets, rows


def _series(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})"


def _stud_cell(kinds: list[str], ratios: list[float]) -> list[str]:
    return [_series(ratios) if k == "stud" else "" for k in kinds]


def _cost_cell(b: Bench, summary: dict, kind: str) -> str:
    """Side by side, and in turn: the hs_mtls median over the pinned hs_new median (a
    different phase, minutes apart, so within the in-turn spread only)."""
    if kind in b.results.mtls_na:
        return "n/a"
    side = b.results.mtls.get(f"{kind} hs_mtls/hs_new")
    if not side:
        return "-"
    in_turn = ratio(summary.get("hs_mtls", {}).get(kind, {}).get("per_cpu_median"),
                    summary.get("hs_new", {}).get(kind, {}).get("per_cpu_median"))
    return _series(side) + (f"; in turn {in_turn:.2f}" if in_turn else "")


def _target(b: Bench, summary: dict, other: str, side: list[float],
            plain: list[float] | None) -> dict:
    """stud/other per proxy CPU-second with mTLS, side by side (drift cancels, see
    paired.py); the in-turn ratios go in its basis, as the other targets'."""
    runs = b.results.runs.get("hs_mtls", {})
    theirs = {r["rep"]: r.get("per_cpu") for r in runs.get(other, [])}
    in_turn = [r["per_cpu"] / theirs[r["rep"]] for r in runs.get("stud", [])
               if r.get("per_cpu") and theirs.get(r["rep"])]
    s = summary.get("hs_mtls", {})
    of_medians = ratio(s.get("stud", {}).get("per_cpu_median"),
                       s.get(other, {}).get("per_cpu_median"))
    measured = statistics.median(side)
    basis = (f"stud/{other} per proxy CPU-second, client-verify required, side by side, "
             f"median of {len(side)}: " + ", ".join(f"{r:.3f}" for r in side)
             + f"; in turn: {fmt(median(in_turn), 2)} (median of {len(in_turn)} back-to-back "
             f"pairs: " + ", ".join(f"{r:.2f}" for r in in_turn)
             + f"); ratio of medians {fmt(of_medians, 2)}")
    if plain:
        basis += f"; without mTLS, side by side: {statistics.median(plain):.3f}"
    return dict(name=f"hs_mtls_vs_{other}", measured=measured,
                target=f"stud/{other} >= {MTLS_TARGET:.1f}",
                verdict=verdict(measured >= MTLS_TARGET), basis=basis)
