"""Structured logs (structlog): JSON in production, readable in development.

Log events carry ids and decisions only. As a second line of defence, values under keys that
usually hold patient data are replaced before anything is written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

PHI_KEYS = frozenset({"text", "body", "message", "sender", "recipient", "name", "dob",
                      "phone", "email", "note", "summary", "patient_id", "address"})


def redact_phi(_logger: Any, _method: str,
               event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in PHI_KEYS & event.keys():
        event[key] = "[redacted]"
    return event


def configure_logging(*, production: bool, level: int = logging.INFO) -> None:
    renderer: Any = (structlog.processors.JSONRenderer() if production
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_phi,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Resolved at each use, so a replaced sys.stderr (tests, daemons) is honoured.
        logger_factory=lambda *args: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # uvicorn's access log would print request paths and client addresses; ours is enough.
    logging.getLogger("uvicorn.access").disabled = True
