"""python3 -m studbench (from bench/), the same as python3 bench/bench.py."""

import sys

from .cli import main

sys.exit(main())
