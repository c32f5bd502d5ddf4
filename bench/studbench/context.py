"""The run's state, handed to every phase: the options, the work dir, the processes, the
tools found and the results so far; and one proxy instance."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .certs import ClientAuth
from .common import CLIENT_CPUS, log
from .prepare import StudCommand
from .procs import Processes, Started


@dataclass
class Results:
    """Everything measured; latest.json has each under the same name."""

    runs: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # scenario -> kind
    idle: dict[str, dict[str, dict]] = field(default_factory=dict)  # count -> kind
    resume: dict[str, dict[str, dict]] = field(default_factory=dict)  # kind -> mode
    paired: dict[str, list[float]] = field(default_factory=dict)  # scenario -> hitch/stud
    aa: dict[str, list[float]] = field(default_factory=dict)  # method -> hitch-A/hitch-B
    mtls: dict[str, list[float]] = field(default_factory=dict)  # pair -> side-by-side ratios
    fleet: dict[str, Any] = field(default_factory=dict)  # see fleet.py
    many: dict[str, Any] = field(default_factory=dict)  # see many.py
    creep: dict[str, Any] = field(default_factory=dict)  # see creep.py
    flood: dict[str, Any] = field(default_factory=dict)  # see flood.py
    cores: dict[str, Any] = field(default_factory=dict)  # see cores.py
    mtls_na: dict[str, str] = field(default_factory=dict)  # proxy -> why it has no hs_mtls
    idle_capped: dict[int, int] = field(default_factory=dict)  # wanted -> measured count
    close_reasons: dict[str, int] = field(default_factory=dict)  # from stud's connection log
    notes: list[str] = field(default_factory=list)  # warnings stud printed
    problems: list[str] = field(default_factory=list)

    def record(self, scenario: str, kind: str, res: dict | None) -> None:
        if res is not None:
            self.runs.setdefault(scenario, {}).setdefault(kind, []).append(res)

    def problem(self, kind: str, msg: str) -> None:
        text = f"{kind}: {msg}"
        if text not in self.problems:
            self.problems.append(text)
            log(f"PROBLEM {text}")


@dataclass
class Instance:
    """One proxy process (with its workers) listening on `port`."""

    kind: str
    label: str
    port: int
    pem: Path
    workers: int
    cpus: set[int]
    proc: Started | None = None  # None: not started, or stopped
    argv: list[str] = field(default_factory=list)
    extra: tuple[str, ...] = ()  # more stud options
    mtls: ClientAuth | None = None  # requires verified client certificates; clients present one
    ticket_keys: Path | None = None  # a HAProxy tls-ticket-keys file (stud, HAProxy)
    error: str = ""

    def pids(self) -> list[int]:
        return self.proc.pids() if self.proc else []


@dataclass
class Bench:
    """One run: the phases read the options and tools from it and add to its results."""

    args: argparse.Namespace
    work: Path
    stud: StudCommand
    wrk: str | None  # None: pyload stands in
    t_start: float = field(default_factory=time.monotonic)
    procs: Processes = field(default_factory=Processes)
    results: Results = field(default_factory=Results)
    kinds: list[str] = field(default_factory=list)  # the proxies that are there to measure
    tlsload: Path | None = None  # None: pyload stands in
    ports: set[int] = field(default_factory=set)  # handed out so far
    commands: dict[str, str] = field(default_factory=dict)  # what ran, for the record
    current: str = "warm-up"  # scenario being measured (names the client commands recorded)
    client_cpus: set[int] = field(default_factory=lambda: CLIENT_CPUS)
    backend: Started | None = None
    backend_port: int = 0
    backend_kind: str = ""

    def problem(self, kind: str, msg: str) -> None:
        self.results.problem(kind, msg)

    def over_budget(self) -> bool:
        return time.monotonic() - self.t_start > self.args.budget * 60
