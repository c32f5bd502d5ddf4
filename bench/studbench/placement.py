"""Where the cores scenario runs what, from the CPUs this process may use: the pure part of
cores.py, importable without the rest of the bench (whose procs.py changes the environment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SIBLINGS = "/sys/devices/system/cpu/cpu{}/topology/thread_siblings_list"


@dataclass
class Plan:
    """Where the cores scenario puts things: N workers run on proxy[:N]; the load side (one
    tlsload per CPU and the backend) on load, which is never smaller than proxy."""

    proxy: list[int]
    load: list[int]
    workers: list[int]  # 1, 2, 4, ... up to len(proxy)


def plan(cpus: list[int]) -> Plan | None:
    """The placement on these CPUs; None when there are fewer than 2 proxy cores to compare
    with 1. A TLS 1.3 client handshake costs the client as much CPU as the server or more,
    so the proxy gets at most half: the largest power of two that fits, so that the worker
    counts double up to all of them; the lowest CPUs, as the rest of the bench runs its
    proxies on CPU 0. The load side gets the rest."""
    cpus = sorted(set(cpus))
    half = len(cpus) // 2
    n = 1 << (half.bit_length() - 1) if half else 0
    if n < 2:
        return None
    return Plan(proxy=cpus[:n], load=cpus[n:], workers=[1 << i for i in range(n.bit_length())])


def not_measurable(count: int) -> str:
    """Why plan() found nothing to measure on `count` CPUs."""
    half = count // 2
    return (f"the proxy would get {half} core{'s' * (half != 1)} of {count} and the load side "
            "the rest; scaling needs at least 2 proxy cores and as many for the load side "
            "(4 CPUs; 16 for 1 to 8 workers)")


def cpu_list(text: str) -> list[int]:
    """A kernel CPU list ("0-3,8,10-11") as numbers."""
    out: list[int] = []
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def smt_siblings(cpus: list[int]) -> list[list[int]]:
    """Groups of these CPUs that are hardware threads of one core: two workers there share
    one core's execution units and cannot scale as two cores."""
    groups: set[tuple[int, ...]] = set()
    for cpu in cpus:
        try:
            siblings = cpu_list(Path(SIBLINGS.format(cpu)).read_text())
        except (OSError, ValueError):
            continue
        group = tuple(sorted(set(siblings) & set(cpus)))
        if len(group) > 1:
            groups.add(group)
    return [list(g) for g in sorted(groups)]
