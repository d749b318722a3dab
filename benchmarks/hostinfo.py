"""The host a benchmark ran on: a busy machine slows every measurement, so each report says."""

from __future__ import annotations

import os
import sys
from typing import Any


def host_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count() or 1, "python": sys.version.split()[0],
            "loadavg_start": round(os.getloadavg()[0], 2)}


def host_footer(host: dict[str, Any]) -> str:
    busy = " - BUSY HOST, expect noisy numbers" if host["loadavg_start"] >= host["cpus"] / 2 else ""
    return (f"Host: {host['cpus']} CPUs, Python {host['python']}, load average "
            f"{host['loadavg_start']} at start{busy}.")
