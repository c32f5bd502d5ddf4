"""The benchmark suite's smoke run: it must run and produce numbers (targets are not checked
here; `bash bench/run.sh` measures them against hitch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import memory_bound, tool_env

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_produces_numbers(tmp_path):
    # Under a sanitizer only stud gets its runtime (see bench/studbench/procs.py).
    env = {**tool_env(), "STUD_SANITIZER_PRELOAD": os.environ.get("LD_PRELOAD", "")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--smoke", "--no-install",
         "--proxies", "stud,hitch", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    for scenario in ("hs_new", "conn_resumed", "rps_keepalive", "bulk", "hs_mtls"):
        assert results["summary"][scenario]["stud"]["median"] > 0, scenario
    # verified handshakes cost more CPU than plain ones
    assert 0 < results["mtls"]["side_by_side"]["stud hs_mtls/hs_new"][0] < 1
    assert not [p for p in results["problems"] if "mtls" in p], results["problems"]
    idle = next(iter(results["idle_mem"].values()))["stud"]
    assert idle["established"] == idle["count"]
    assert 0 < idle["kib_per_conn"] < memory_bound(100)
    # conns_many: every connection held and answering at the end (where a network namespace
    # can be made: as root); mem_creep: the connections were made; flood: no legitimate
    # request failed and the proxy survived each attack
    many = results["conns_many"]
    if "skipped" not in many:
        for config, per_kind in many.items():
            if isinstance(per_kind, dict):
                assert all(r["clean"] for r in per_kind["stud"]), (config, per_kind["stud"])
    creep = results["mem_creep"]["runs"]["stud"]
    assert creep["complete"] and creep["errors"] == 0 and creep["rss_end_kib"] > 0, creep
    for setup, per_attack in results["flood"].get("runs", {}).items():
        for attack, runs in per_attack.items():
            for r in runs:
                assert r["proxy_alive"] and r["legit_failed"] == 0, (setup, attack, r)
                assert r["legit"]["keepalive"]["value"] > 0, (setup, attack, r)
    # fleet: three studs sharing a key file and Redis resume every reconnect; a resumption
    # whose session comes from Redis costs B more CPU than one from its own cache
    if shutil.which("redis-server"):
        fleet = results["fleet"]
        for mode, r in fleet["resumption"]["stud"].items():
            assert r["resumed"] == r["reconnects"] > 0, (mode, r)
        assert fleet["summary"]["redis_over_local"][0] > 1
        assert not [p for p in results["problems"] if "fleet" in p], results["problems"]
