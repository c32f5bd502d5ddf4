"""The cores benchmark's placement (bench/studbench/placement.py): which CPUs the proxy gets,
which the load side, and the worker counts, for the CPUs a host lets the bench use."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

# placement.py imports no other bench module: procs.py would take LD_PRELOAD out of this
# process's environment under a sanitizer run.
from studbench.placement import cpu_list, not_measurable, plan  # noqa: E402


@pytest.mark.parametrize("cpus", [[], [0], [0, 1], [0, 1, 2], [3, 7, 9]])
def test_fewer_than_two_proxy_cores_is_not_measurable(cpus):
    assert plan(cpus) is None


def test_this_kind_of_host_says_why():
    why = not_measurable(2)
    assert why.startswith("the proxy would get 1 core of 2 ")
    assert "16 for 1 to 8 workers" in why


def test_four_cpus():
    p = plan([0, 1, 2, 3])
    assert p is not None
    assert (p.proxy, p.load, p.workers) == ([0, 1], [2, 3], [1, 2])


def test_sixteen_cpus_measure_up_to_eight_workers():
    p = plan(list(range(16)))
    assert p is not None
    assert p.proxy == list(range(8))
    assert p.load == list(range(8, 16))
    assert p.workers == [1, 2, 4, 8]


def test_the_load_side_keeps_what_is_left_over():
    p = plan(list(range(24)))
    assert p is not None
    assert (len(p.proxy), len(p.load), p.workers) == (8, 16, [1, 2, 4, 8])
    p = plan(list(range(7)))
    assert p is not None
    assert (p.proxy, p.load, p.workers) == ([0, 1], [2, 3, 4, 5, 6], [1, 2])


def test_unordered_non_contiguous_and_repeated_cpus():
    p = plan([11, 3, 9, 1, 7, 5, 3])
    assert p is not None
    assert p.proxy == [1, 3]
    assert p.load == [5, 7, 9, 11]
    assert p.workers == [1, 2]


@pytest.mark.parametrize("count", range(4, 70))
def test_any_size(count):
    cpus = [2 * i + 1 for i in range(count)]  # odd numbers: not 0..n-1
    p = plan(cpus)
    assert p is not None
    assert not set(p.proxy) & set(p.load)
    assert sorted(p.proxy + p.load) == cpus
    assert len(p.load) >= len(p.proxy) >= 2
    n = len(p.proxy)
    assert n & (n - 1) == 0 and 2 * n > count // 2  # the largest power of two that fits
    assert p.workers == [2**i for i in range(n.bit_length())]
    assert p.workers[-1] == n


def test_kernel_cpu_lists():
    assert cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert cpu_list("5") == [5]
    assert cpu_list("") == []
