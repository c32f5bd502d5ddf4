"""Each worker's share of the connections: every worker of a generation writes how many it
holds into memory they all share (an anonymous shared mapping the master makes before it
forks them), and one holding well over the mean pauses accepting for a moment.

All workers accept on the same listening sockets. The kernel wakes every one of them for a
new connection and whichever runs first takes what is queued, so on a busy host one worker
can end up with far more connections than the others. hitch gives each worker a listener of
its own (SO_REUSEPORT) instead; the connections queued on a worker's listener are then lost
when that worker exits, which a reload without a failed connection cannot afford.
"""

from __future__ import annotations

import mmap

AHEAD = 1.10  # a worker over the mean by this factor...
SLACK = 16    # ...and by this many connections is ahead
PAUSE = 0.05  # seconds an ahead worker leaves new connections to the others
COUNT = 8     # bytes per worker's count (a signed 64-bit integer)


def is_ahead(mine: int, total: int, workers: int) -> bool:
    """Whether a worker holding `mine` of `total` connections (over `workers`) is ahead."""
    return mine > total / workers * AHEAD + SLACK


class Shares:
    """The counts of one generation's workers, by slot (the arbiter's numbering)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.map = mmap.mmap(-1, COUNT * workers)  # MAP_SHARED: the forked workers see it
        self.counts = memoryview(self.map).cast("q")

    def reset(self, slot: int) -> None:
        """A new worker in `slot` starts from nothing (its predecessor's count goes)."""
        self.counts[slot] = 0

    def ahead(self, slot: int, mine: int) -> bool:
        """Publish `mine` for `slot`; whether it is ahead of the others."""
        self.counts[slot] = mine
        return is_ahead(mine, sum(self.counts), self.workers)
