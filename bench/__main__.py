"""``python -m bench``: every benchmark within a time budget → docs/benchmarks.md."""

from __future__ import annotations

import sys

from bench.report import main

if __name__ == "__main__":
    sys.exit(main())
