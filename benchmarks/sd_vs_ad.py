#!/usr/bin/env python3
"""SD vs AD on this CPU for the bundled pair (batch 1, greedy, float32); see edgespec.bench.sd_vs_ad for the regime.

Prints a table for people; with --json (default here) the last line is one JSON object with one row per γ.
Same as `edgespec bench sd-vs-ad --json`.
"""

import sys

from edgespec.cli import app

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "bench", "sd-vs-ad", *(sys.argv[1:] or ["--json"])]
    app()
