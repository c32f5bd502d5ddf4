"""conns_many, mem_creep and flood in the table, with their targets: connections held, memory
per connection and each worker's share; RSS after a million connections; the legitimate
clients' p99 and failures under each attack."""

from __future__ import annotations

from .common import IDLE_KIB_TARGET
from .context import Bench
from .creep import GROWTH_TARGET
from .flood import ATTACKS, LIMITED, P99_TARGET
from .many import SHARE_TARGET
from .summary import fmt, median, ratio, verdict

Table = tuple[list[dict], list[list[str]]]


def load_table(b: Bench) -> Table:
    """(targets, rows) of the three scenarios that ran."""
    targets: list[dict] = []
    rows: list[list[str]] = []
    for part in (_many(b), _creep(b), _flood(b)):
        targets += part[0]
        rows += part[1]
    return targets, rows


def _row(b: Bench, name: str, unit: str, cells: dict[str, str], target: str = "(info)",
         ok: bool | None = None) -> list[str]:
    return [name, unit, *[cells.get(k, "-") for k in b.kinds], "-", "-", target,
            "" if ok is None else verdict(ok)]


def _many(b: Bench) -> Table:
    targets, rows = [], []
    configs = [(c, v) for c, v in b.results.many.items() if isinstance(v, dict) and "stud" in v]
    for i, (config, per_kind) in enumerate(configs):
        # memory per connection: a target where fixed costs are spread (the largest run)
        kib_target = f"stud <= {IDLE_KIB_TARGET:g}" if i == 0 else "(info)"
        runs = {k: [r for r in v if "count" in r] for k, v in per_kind.items()}
        held = {k: f"{min(r['answered'] for r in v)}/{v[0]['count']}" for k, v in runs.items() if v}
        kib = {k: median([r["kib_per_conn"] for r in v]) for k, v in runs.items()}
        busiest = {k: max(r["busiest_over_mean"] or 0 for r in v) for k, v in runs.items() if v}
        setup = {k: median([r["setup_s"] for r in v]) for k, v in runs.items()}
        n = len(runs["stud"])
        rows.append(_row(b, f"conns_many {config}: alive and answering at the end", "conns",
                         held))
        rows.append(_row(b, f"conns_many {config}: RSS per connection", "KiB",
                         {k: fmt(v) for k, v in kib.items()}, kib_target,
                         _at_most(kib.get("stud"), IDLE_KIB_TARGET) if i == 0 else None))
        rows.append(_row(b, f"conns_many {config}: busiest worker / mean"
                         + (f" (worst of {n})" if n > 1 else ""), "ratio",
                         {k: fmt(v, 2) for k, v in busiest.items()},
                         f"stud <= {SHARE_TARGET}", _at_most(busiest.get("stud"), SHARE_TARGET)))
        rows.append(_row(b, f"conns_many {config}: time to establish", "s",
                         {k: fmt(v) for k, v in setup.items()}))
        complete = all(r["clean"] for r in runs["stud"])
        if i == 0:
            targets.append(dict(
                name=f"conns_many_kib {config}", measured=kib.get("stud"),
                target=f"<= {IDLE_KIB_TARGET:g} KiB",
                verdict=verdict(_at_most(kib.get("stud"), IDLE_KIB_TARGET)),
                basis=f"hitch {fmt(kib.get('hitch'))}; all held and answering: {complete}"))
        targets += [
            dict(name=f"conns_many_share {config}", measured=busiest.get("stud"),
                 target=f"<= {SHARE_TARGET}", verdict=verdict(
                     _at_most(busiest.get("stud"), SHARE_TARGET)),
                 basis=f"busiest worker's connections / the mean, worst of {n}; hitch "
                       f"{fmt(busiest.get('hitch'), 2)}"),
        ]
    return targets, rows


def _creep(b: Bench) -> Table:
    runs = b.results.creep.get("runs", {})
    if "stud" not in runs:
        return [], []
    first = b.results.creep["first_mark"]
    growth = {k: r["growth"] for k, r in runs.items()}
    cells = {k: f"{100 * g:+.1f}% ({r['rss_at_first_mark_kib']} -> {r['rss_end_kib']} KiB, "
                f"{r['connections']:,} conns)" if g is not None else "-"
             for (k, r), g in zip(runs.items(), growth.values(), strict=True)}
    ok = _at_most(growth["stud"], GROWTH_TARGET)
    row = _row(b, f"mem_creep: RSS at the end / after {first:,} connections", "growth", cells,
               f"stud <= +{100 * GROWTH_TARGET:g}%", ok)
    target = dict(name="mem_creep", measured=growth["stud"],
                  target=f"<= +{100 * GROWTH_TARGET:g}%", verdict=verdict(ok),
                  basis=f"{runs['stud']['connections']:,} connections opened and closed "
                        f"({runs['stud']['errors']} errors); hitch "
                        + (f"{100 * growth['hitch']:+.1f}%" if growth.get("hitch") is not None
                           else "-"))
    return [target], [row]


def flood_p99s(runs: list[dict], base: list[dict]) -> tuple[float | None, float | None]:
    """The legitimate keep-alive p99 under attack (median over repetitions) and its ratio to
    the same proxy's without attack."""
    under = median([r["legit"]["keepalive"].get("p99_ms") for r in runs])
    alone = median([r["legit"]["keepalive"].get("p99_ms") for r in base])
    return under, ratio(under, alone)


def _flood(b: Bench) -> Table:
    runs = b.results.flood.get("runs", {})
    if not runs:
        return [], []
    targets, rows = [], []
    for attack in ATTACKS:
        cells: dict[str, list[str]] = {}
        for setup, per_attack in runs.items():
            if attack not in per_attack:
                continue
            p99, times = flood_p99s(per_attack[attack], per_attack.get("none", []))
            failed = sum(r["legit_failed"] for r in per_attack[attack])
            # (the lowest repetition: memory a glibc or hitch process does not give back after
            # an earlier attack is not this attack's)
            rss = min(r["rss_max_kib"] for r in per_attack[attack])
            text = f"{fmt(p99)} ms" + (f" (x{times:.1f})" if attack != "none" else "")
            text += f", {failed} failed, RSS {rss // 1024} MiB"
            kind = "stud" if setup.startswith("stud") else setup
            label = " with limiter" if setup == LIMITED else ""
            cells.setdefault(kind, []).append(text + label)
            if setup == LIMITED and attack != "none":
                ok = times is not None and times <= P99_TARGET and failed == 0
                targets.append(dict(
                    name=f"flood_{attack}", measured=times, target=f"p99 <= x{P99_TARGET:g}, "
                    "0 failed", verdict=verdict(ok),
                    basis=f"legitimate keep-alive p99 under the {attack} attack over without, "
                          f"stud with {b.results.flood.get('limiter')}; {failed} failed"))
        rows.append(_row(b, f"flood {attack}: legitimate keep-alive p99", "ms",
                         {k: "; ".join(v) for k, v in cells.items()}))
    return targets, rows


def _at_most(x: float | None, limit: float) -> bool | None:
    return None if x is None else x <= limit
