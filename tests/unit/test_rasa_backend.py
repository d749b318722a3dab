"""The Rasa backend falls back to the embedded classifier whenever Rasa cannot answer.

No Rasa server here: the failures are real sockets (a closed port, a server that accepts and
never answers, one that answers 500) and the happy path is a local server speaking Rasa's
documented /model/parse response. tests/rasa/ runs the same client against a real Rasa.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from nlu.base import IntentPrediction
from nlu.rasa.client import DEGRADED_BACKEND, RasaClassifier, parse_response

SECRET_TEXT = "my chest hurts since this morning"

# Shaped like the documented response of POST /model/parse (Rasa 3.x HTTP API).
RASA_BODY = {
    "text": "I want to book an appointment for next week",
    "intent": {"name": "schedule_appointment", "confidence": 0.9312},
    "entities": [],
    "intent_ranking": [
        {"name": "schedule_appointment", "confidence": 0.9312},
        {"name": "reschedule_appointment", "confidence": 0.0521},
        {"name": "appointment_info", "confidence": 0.0167},
    ],
    "text_tokens": [[0, 1], [2, 6]],
}


class FixedClassifier:
    """Stands in for the embedded classifier: always the same answer."""

    name = "embedded"

    def __init__(self) -> None:
        self.calls = 0

    async def classify(self, text: str) -> IntentPrediction:
        self.calls += 1
        return IntentPrediction(intent="symptom_report", confidence=0.8)

    async def aclose(self) -> None:
        return None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class LocalServer:
    """A raw HTTP/1.1 server on 127.0.0.1: `status`/`body` answer each request; `hang` makes
    it accept and never answer. Records every request body."""

    status: int = 200
    body: Any = field(default_factory=lambda: RASA_BODY)
    hang: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    received: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received += 1
                if self.hang:
                    await asyncio.Event().wait()
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                request = head.decode("latin-1").split("\r\n", 1)[0]
                self.requests.append({"line": request,
                                      "json": json.loads(await reader.readexactly(length))})
                payload = (self.body if isinstance(self.body, bytes)
                           else json.dumps(self.body).encode())
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (self.status, len(payload),
                                                               payload))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    state = LocalServer()
    handlers: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        await state.handle(reader, writer)

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = srv.sockets[0].getsockname()[1]
    yield state
    srv.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await srv.wait_closed()


def closed_port() -> int:
    """A port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fallbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("patientbot_nlu_backend_fallbacks_total",
                                     {"reason": reason}) or 0.0


def make(url: str, **options: Any) -> tuple[RasaClassifier, FixedClassifier]:
    fallback = FixedClassifier()
    options = {"timeout": 0.5, "total_timeout": 1.0, "retries": 1, "backoff": 0.01} | options
    return RasaClassifier(fallback=fallback, base_url=url, **options), fallback


def assert_degraded(prediction: IntentPrediction) -> None:
    assert prediction.degraded
    assert prediction.backend == DEGRADED_BACKEND
    assert prediction.intent == "symptom_report"


async def test_maps_a_rasa_parse_response(server: LocalServer) -> None:
    classifier, fallback = make(server.url)
    prediction = await classifier.classify("I want to book an appointment for next week")
    await classifier.aclose()

    assert prediction == IntentPrediction(
        intent="schedule_appointment", confidence=0.9312, backend="rasa", degraded=False,
        ranking=(("schedule_appointment", 0.9312), ("reschedule_appointment", 0.0521),
                 ("appointment_info", 0.0167)))
    assert fallback.calls == 0
    assert server.requests == [{"line": "POST /model/parse HTTP/1.1",
                                "json": {"text": "I want to book an appointment for next week"}}]


async def test_sends_the_auth_token_as_rasa_expects(server: LocalServer) -> None:
    classifier, _ = make(server.url + "/", token="s3cret")
    await classifier.classify("hello")
    await classifier.aclose()
    assert server.requests[0]["line"] == "POST /model/parse?token=s3cret HTTP/1.1"


def test_nlu_fallback_is_out_of_scope() -> None:
    prediction = parse_response({
        "text": "asdf qwerty",
        "intent": {"name": "nlu_fallback", "confidence": 0.3},
        "intent_ranking": [{"name": "nlu_fallback", "confidence": 0.3},
                           {"name": "greeting", "confidence": 0.21},
                           {"name": "out_of_scope", "confidence": 0.12}],
    })
    assert prediction.intent == "out_of_scope"
    assert prediction.confidence == pytest.approx(0.3)
    assert prediction.ranking == (("out_of_scope", 0.3), ("greeting", 0.21))


def test_empty_intent_and_odd_confidences() -> None:
    prediction = parse_response({"text": "", "intent": {"name": None, "confidence": 0.0},
                                 "intent_ranking": [{"name": "greeting", "confidence": 1.7}]})
    assert prediction.intent == "out_of_scope"
    assert prediction.ranking == (("greeting", 1.0),)


@pytest.mark.parametrize("body", [b"not json", {"text": "hi"}, ["a", "list"]])
async def test_malformed_body_falls_back_without_retry(server: LocalServer, body: Any) -> None:
    server.body = body
    classifier, fallback = make(server.url, retries=3)
    before = fallbacks("error")
    assert_degraded(await classifier.classify("hello"))
    await classifier.aclose()
    assert len(server.requests) == 1
    assert fallbacks("error") == before + 1


async def test_connection_refused_falls_back() -> None:
    classifier, fallback = make(f"http://127.0.0.1:{closed_port()}")
    before = fallbacks("error")
    with capture_logs() as logs:
        assert_degraded(await classifier.classify(SECRET_TEXT))
    await classifier.aclose()

    assert fallback.calls == 1
    assert fallbacks("error") == before + 1
    assert logs and all(SECRET_TEXT not in repr(entry) for entry in logs)
    assert logs[0]["reason"] == "error"


async def test_timeout_falls_back_within_the_total_bound(server: LocalServer) -> None:
    server.hang = True
    classifier, _ = make(server.url, timeout=0.2, total_timeout=0.5, retries=10)
    before = fallbacks("timeout")
    started = time.monotonic()
    with capture_logs() as logs:
        assert_degraded(await classifier.classify(SECRET_TEXT))
    elapsed = time.monotonic() - started
    await classifier.aclose()

    # Retried after the first 0.2 s timeout, then cut at 0.5 s (unbounded: over 10 s).
    assert 0.4 < elapsed < 1.2
    assert server.connections >= 2
    assert fallbacks("timeout") == before + 1
    assert all(SECRET_TEXT not in repr(entry) for entry in logs)


async def test_5xx_is_retried_then_falls_back(server: LocalServer) -> None:
    server.status = 503
    server.body = {"version": "3.6.21", "status": "failure", "message": "boom"}
    classifier, _ = make(server.url, retries=2)
    before = fallbacks("error")
    with capture_logs() as logs:
        assert_degraded(await classifier.classify(SECRET_TEXT))
    await classifier.aclose()

    assert len(server.requests) == 3
    assert fallbacks("error") == before + 1
    assert logs[0]["status"] == 503
    assert all(SECRET_TEXT not in repr(entry) for entry in logs)


async def test_4xx_is_not_retried(server: LocalServer) -> None:
    server.status = 401
    classifier, _ = make(server.url, retries=2)
    assert_degraded(await classifier.classify("hello"))
    await classifier.aclose()
    assert len(server.requests) == 1


async def test_recovers_when_5xx_is_transient(server: LocalServer) -> None:
    classifier, _ = make(server.url, retries=1, backoff=0.2)
    server.status = 500
    task = asyncio.create_task(classifier.classify("book me in"))
    while not server.requests:
        await asyncio.sleep(0.001)
    server.status = 200
    prediction = await task
    await classifier.aclose()
    assert not prediction.degraded
    assert prediction.intent == "schedule_appointment"
    assert len(server.requests) == 2


async def test_circuit_breaker_opens_half_opens_and_closes(server: LocalServer) -> None:
    clock = FakeClock()
    classifier, fallback = make(server.url, retries=0, breaker_failures=2,
                                breaker_reset_seconds=30.0, clock=clock)
    server.status = 500

    for _ in range(2):
        assert_degraded(await classifier.classify("hello"))
    assert classifier.breaker.state == "open"
    assert len(server.requests) == 2

    # Open: no request reaches the server; the answer comes from the fallback at once.
    before = fallbacks("circuit_open")
    assert_degraded(await classifier.classify("hello"))
    assert len(server.requests) == 2
    assert fallbacks("circuit_open") == before + 1

    # Half-open after the reset interval: one probe; it fails, so the breaker opens again.
    clock.now += 30.0
    assert classifier.breaker.state == "half_open"
    assert_degraded(await classifier.classify("hello"))
    assert len(server.requests) == 3
    assert classifier.breaker.state == "open"
    clock.now += 29.0
    assert_degraded(await classifier.classify("hello"))
    assert len(server.requests) == 3

    # Half-open again; Rasa is back, so the probe succeeds and the breaker closes.
    clock.now += 1.0
    server.status = 200
    prediction = await classifier.classify("book me in")
    assert not prediction.degraded and prediction.backend == "rasa"
    assert classifier.breaker.state == "closed"
    assert fallback.calls == 5
    await classifier.aclose()


async def test_half_open_lets_only_one_probe_through(server: LocalServer) -> None:
    clock = FakeClock()
    classifier, _ = make(server.url, retries=0, breaker_failures=1,
                         breaker_reset_seconds=5.0, clock=clock, timeout=1.0, total_timeout=1.0)
    server.status = 500
    await classifier.classify("hello")
    assert classifier.breaker.state == "open"

    clock.now += 5.0
    server.status = 200
    server.hang = True  # the probe is in flight while other messages arrive
    probe = asyncio.create_task(classifier.classify("hello"))
    while server.received < 2:
        await asyncio.sleep(0.001)
    others = await asyncio.gather(*(classifier.classify("hi") for _ in range(3)))
    assert all(prediction.degraded for prediction in others)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    # A cancelled probe is given back: the next message may probe.
    server.hang = False
    assert not (await classifier.classify("book me in")).degraded
    assert classifier.breaker.state == "closed"
    await classifier.aclose()


async def test_consecutive_failures_reset_on_success(server: LocalServer) -> None:
    classifier, _ = make(server.url, retries=0, breaker_failures=2, clock=FakeClock())
    for status in (500, 200, 500, 200, 500):
        server.status = status
        await classifier.classify("hello")
    assert classifier.breaker.state == "closed"
    await classifier.aclose()


async def test_default_total_bound_is_twice_the_attempt_timeout(server: LocalServer) -> None:
    server.hang = True
    # Positional URL and option names as nlu/service.py passes them from config/nlu.yml.
    classifier = RasaClassifier(server.url, fallback=FixedClassifier(), timeout=0.2,
                                retries=10, breaker_failures=5, breaker_reset_seconds=30)
    started = time.monotonic()
    assert_degraded(await classifier.classify("hello"))
    await classifier.aclose()
    assert time.monotonic() - started < 1.0  # 0.4 s bound; unbounded: over 10 s


async def test_an_unexpected_client_error_falls_back() -> None:
    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"bug while sending {request.content!r}")

    async with httpx.AsyncClient(transport=httpx.MockTransport(explode)) as client:
        classifier = RasaClassifier(fallback=FixedClassifier(), client=client)
        with capture_logs() as logs:
            assert_degraded(await classifier.classify(SECRET_TEXT))
    assert logs[0]["error"] == "RuntimeError"
    assert all(SECRET_TEXT not in repr(entry) for entry in logs)


async def test_aclose_leaves_an_injected_client_open(server: LocalServer) -> None:
    async with httpx.AsyncClient() as client:
        classifier = RasaClassifier(fallback=FixedClassifier(), base_url=server.url,
                                    client=client)
        await classifier.aclose()
        assert not client.is_closed
        assert not (await classifier.classify("hello")).degraded
