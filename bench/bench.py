#!/usr/bin/env python3
"""Runs the benchmark suite, the package studbench next to this file (see bench/README.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from studbench.cli import main  # noqa: E402  (found through the path set above)

if __name__ == "__main__":
    sys.exit(main())
