"""Figures the cluster tests measure (start delays, deletion times, bring-up), kept per run.

They go to stderr (seen with `pytest -s`) and to a JSON-lines file next to the run directory,
so the figures quoted in the README can be read again after a run.
"""

from __future__ import annotations

import json
import sys
import time

from tests.cluster.paths import RUN_DIR

MEASUREMENTS = RUN_DIR.parent / "measurements.jsonl"


def record(what: str, seconds: float) -> None:
    print(f"\n[cluster] {what}: {seconds:.2f}s", file=sys.stderr)
    MEASUREMENTS.parent.mkdir(parents=True, exist_ok=True)
    with MEASUREMENTS.open("a") as f:
        f.write(json.dumps({"at": time.time(), "what": what, "seconds": round(seconds, 3)}) + "\n")
