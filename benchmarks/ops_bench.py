"""Ops-command benchmark: how long the commands an operator runs by hand take, end to end.

What is measured
    Each command runs as a subprocess (`python -m bot.app.cli ...`, the installed entry
    point's code path) --runs times against the REDIS_URL Redis; the median wall time is
    reported, and its ratio to a bare interpreter start (`python -c pass`) measured in the
    same run, since absolute times on a shared machine are noisy.
    Commands: config check, audit verify, ingress dead-letters, desk token demo.

Target (PASS/FAIL): each under 2 s. None of them may load the NLU model; the test suite
checks that (tests/integration/test_cli_operations.py).

Run it
    make bench-ops
    .venv/bin/python benchmarks/ops_bench.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.core.crypto import new_key  # noqa: E402

COMMANDS = [("config", "check"), ("audit", "verify"), ("ingress", "dead-letters"),
            ("desk", "token", "demo")]
TARGET_SECONDS = 2.0


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not os.environ.get("REDIS_URL"):
        print("ops_bench: REDIS_URL is not set (make bench-ops starts a private Redis)",
              file=sys.stderr)
        return 2
    env = {**os.environ, "PATIENTBOT_DATA_KEYS": f"b1:{new_key()}",
           "PATIENTBOT_LOOKUP_KEY": new_key(), "PATIENTBOT_SESSION_SECRET": new_key(),
           "PATIENTBOT_REDIS_PREFIX": f"opsbench-{os.getpid()}"}
    baseline = statistics.median(timed([sys.executable, "-c", "pass"], env)
                                 for _ in range(args.runs))
    rows = []
    for command in COMMANDS:
        cli = [sys.executable, "-m", "bot.app.cli", *command, "--config", str(ROOT / "config")]
        seconds = statistics.median(timed(cli, env) for _ in range(args.runs))
        rows.append({"command": " ".join(command), "median_s": round(seconds, 3),
                     "x_interpreter": round(seconds / baseline, 1),
                     "verdict": "PASS" if seconds < TARGET_SECONDS else "FAIL"})
    if args.json:
        print(json.dumps({"interpreter_s": round(baseline, 3), "commands": rows}, indent=2))
    else:
        print(f"bare interpreter start: {baseline:.3f} s (median of {args.runs})")
        print(f"{'command':<22} {'median s':>9} {'x start':>8}  target < {TARGET_SECONDS:g} s")
        for row in rows:
            print(f"{row['command']:<22} {row['median_s']:>9.3f} {row['x_interpreter']:>8.1f}"
                  f"  {row['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
