"""Benchmark stud against hitch and HAProxy (TLS termination, TCP mode) on loopback.

Usage: python3 bench/bench.py [--smoke] [options]   (see bench/README.md)

The proxy under test is pinned to CPU 0 with one worker; the load generator and the nginx
backend run on CPU 1.  Each figure is also reported per proxy CPU-second (events divided
by the utime+stime all proxy processes consumed during the measured phase).  A second
mode runs 1 and 2 workers unpinned (hs_new scaling, session resumption across workers).  On
hosts with 4 CPUs or more, `cores` runs 1, 2, 4, ... workers, each on a CPU of its own, with
the load on the other CPUs.
"""
