"""One measurement: a load generator's run with the CPU time the proxy, the generator and
the backend used over it (from /proc), and what went wrong."""

from __future__ import annotations

import time
from collections.abc import Callable

from .common import CLIENT_ERRORS, log
from .context import Bench, Instance
from .procs import CLK_TCK, children_cpu, cpu_ticks


def measure(b: Bench, inst: Instance, scenario: str, fn: Callable[[], dict]) -> dict | None:
    """fn()'s result with the CPU used meanwhile; None if the proxy is down or the client
    failed."""
    if not inst.proc or not inst.proc.alive():
        return None
    pids = inst.pids()
    backend = b.backend.pids() if b.backend else []
    before, backend_before = cpu_ticks(pids), cpu_ticks(backend)
    children_before = children_cpu()
    b.current = scenario
    t0 = time.monotonic()
    try:
        res = fn()
    except CLIENT_ERRORS as e:
        b.problem(inst.kind, f"{scenario} ({inst.label}): client failed: {e}")
        return None
    wall = time.monotonic() - t0
    after_pids = inst.pids()
    after = cpu_ticks(after_pids)
    cpu = sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK
    backend_cpu = sum(t - backend_before.get(p, 0) for p, t in cpu_ticks(backend).items())
    res["client_cpu_s"] = children_cpu() - children_before
    res["backend_cpu_s"] = backend_cpu / CLK_TCK
    res["generator_util"] = (res["client_cpu_s"] + res["backend_cpu_s"]) / wall
    res.update(
        proxy_cpu_s=cpu,
        wall_s=wall,
        proxy_util=cpu / wall if wall else None,
        proxy_pids=len(after_pids),
    )
    _check(b, inst, scenario, res, pids, after_pids)
    return res


def _check(b: Bench, inst: Instance, scenario: str, res: dict, pids: list[int],
           after_pids: list[int]) -> None:
    """Problems: the proxy died or lost a worker, or the client saw errors."""
    assert inst.proc
    if not inst.proc.alive():
        b.problem(
            inst.kind,
            f"{scenario} ({inst.label}): proxy died during the run, "
            f"exit {inst.proc.popen.returncode}; log tail:\n{inst.proc.log_tail()}",
        )
    elif set(after_pids) != set(pids):
        b.problem(
            inst.kind,
            f"{scenario} ({inst.label}): process set changed "
            f"{sorted(pids)} -> {sorted(after_pids)} (crashed/respawned worker?)",
        )
    if res.get("errors"):
        b.problem(
            inst.kind,
            f"{scenario} ({inst.label}): client saw {res['errors']} "
            f"errors {res.get('error_detail', '')}",
        )


def with_per_cpu(res: dict | None, amount: float) -> dict | None:
    if res is not None:
        cpu = res["proxy_cpu_s"]
        res["per_cpu"] = amount / cpu if cpu > 0 else None
    return res


def measure_events(b: Bench, inst: Instance, scenario: str, fn: Callable[[], dict]
                   ) -> dict | None:
    """measure(), with completed events per proxy CPU-second."""
    res = measure(b, inst, scenario, fn)
    return with_per_cpu(res, res["events"] if res else 0)


def log_result(rep: int, scenario: str, kind: str, res: dict, unit: str, per_cpu: bool
               ) -> None:
    per = f"{res['per_cpu']:.1f}" if res.get("per_cpu") else "-"
    log(
        f"rep {rep + 1} {scenario:<14} {kind:<8} {res['value']:10.1f} {unit:<6} "
        + (f"per CPU-s {per:>9}  " if per_cpu else "")
        + f"proxy CPU {res['proxy_util']:.0%}  generator+backend CPU {res['generator_util']:.0%}"
    )
