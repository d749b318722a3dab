"""HTTP helpers every webhook shares: a refusal with its status, and a size-capped body read."""

from __future__ import annotations

from starlette.requests import Request

from bot.core.errors import PatientbotError


class Refused(PatientbotError):
    """An inbound request a channel answers with an error and does not queue: the HTTP
    status, a reason code (metric label, logs) and a short message (never patient data)."""

    def __init__(self, status: int, reason: str, error: str) -> None:
        super().__init__(reason)
        self.status, self.reason, self.error = status, reason, error


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is larger than `limit` bytes: a declared
    length is checked first, and the stream is never read past the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, "too_large", "Request too large.")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise Refused(413, "too_large", "Request too large.")
    return bytes(body)
