"""A decision step that never finishes: used to kill a worker in the middle of a message.

It touches the file named by PATIENTBOT_TEST_MARKER when it starts, so the test knows the
worker is mid-message before killing it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


class HangingStep:
    def __init__(self, config) -> None:
        self._marker = Path(os.environ["PATIENTBOT_TEST_MARKER"])

    async def decide(self, inbound, session, *, now):
        self._marker.touch()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")
