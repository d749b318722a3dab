"""The `rasa` intent-classifier backend: a Rasa server's POST /model/parse.

Rasa is optional and runs as a separate service, so it can be slow, restarting or gone. A
patient must still get an answer: every failure ends in the `fallback` classifier (the embedded
one), marked `degraded` so the handoff note says the usual backend did not answer. Retries are
few and bounded in total time, and a circuit breaker stops paying the timeout on every message
while the server is down. Message text is never logged; only status codes and reasons are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import httpx
import structlog
from prometheus_client import Counter

from bot.core.errors import PatientbotError
from nlu.base import OUT_OF_SCOPE, IntentClassifier, IntentPrediction

log = structlog.get_logger("patientbot.nlu.rasa")

FALLBACKS = Counter(
    "patientbot_nlu_backend_fallbacks_total",
    "Messages classified by the fallback backend because Rasa could not answer",
    ["reason"],
)

RASA_FALLBACK_INTENT = "nlu_fallback"  # FallbackClassifier's low-confidence intent
DEGRADED_BACKEND = "embedded (rasa unavailable)"

Reason = Literal["timeout", "error", "circuit_open"]
BreakerState = Literal["closed", "open", "half_open"]


class RasaUnavailable(PatientbotError):
    """Rasa gave no usable answer; `reason` is the metric label, `retryable` whether another
    attempt could help (connect errors, timeouts, 5xx)."""

    def __init__(self, reason: Reason, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason: Reason = reason
        self.retryable = retryable
        self.status = status


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; after `reset_after` seconds lets
    one probe through (half-open): success closes it, failure opens it again.

    The clock is injectable so tests move time instead of sleeping.
    """

    def __init__(self, *, failure_threshold: int = 5, reset_after: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self._threshold = failure_threshold
        self._reset_after = reset_after
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._reset_after:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a request may go to the server now (claims the single half-open probe)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        """Give back an unfinished probe (the caller was cancelled), so a later call probes."""
        self._probing = False


class RasaClassifier:
    """IntentClassifier over a Rasa server, answering through `fallback` when Rasa cannot.

    `timeout` bounds each HTTP attempt and `total_timeout` (default twice `timeout`) the whole
    call including retries and backoff, so a dead server costs a message at most that. Pass
    `client` to supply the transport (tests, shared pools); a client created here is closed by
    `aclose`. The fallback belongs to the caller and is not closed here.
    """

    name = "rasa"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:5005",
        *,
        fallback: IntentClassifier,
        client: httpx.AsyncClient | None = None,
        token: str | None = None,
        timeout: float = 1.5,
        total_timeout: float | None = None,
        retries: int = 1,
        backoff: float = 0.05,
        breaker_failures: int = 5,
        breaker_reset_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fallback = fallback
        self._url = base_url.rstrip("/") + "/model/parse"
        self._params = {"token": token} if token else None  # rasa run --auth-token
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()
        self._timeout = timeout
        # Default: room for one retry, never more than twice the per-attempt timeout.
        self._total_timeout = total_timeout if total_timeout is not None else 2 * timeout
        self._retries = max(0, retries)
        self._backoff = backoff
        self.breaker = CircuitBreaker(failure_threshold=breaker_failures,
                                      reset_after=breaker_reset_seconds, clock=clock)

    async def classify(self, text: str) -> IntentPrediction:
        if not self.breaker.allow():
            return await self._degrade(text, "circuit_open")
        try:
            prediction = await self._parse(text)
        except RasaUnavailable as err:
            self.breaker.record_failure()
            log.warning("rasa_unavailable", reason=err.reason, status=err.status,
                        breaker=self.breaker.state)
            return await self._degrade(text, err.reason)
        except Exception as err:  # the protocol says never raise: a surprise is a failure too
            self.breaker.record_failure()
            log.error("rasa_client_error", error=type(err).__name__, breaker=self.breaker.state)
            return await self._degrade(text, "error")
        except BaseException:  # cancelled: give back a half-open probe, then propagate
            self.breaker.release()
            raise
        self.breaker.record_success()
        return prediction

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _parse(self, text: str) -> IntentPrediction:
        """Ask Rasa, retrying only failures another attempt could fix, within the deadline."""
        attempt = 0
        try:
            async with asyncio.timeout(self._total_timeout):
                while True:
                    try:
                        return parse_response(await self._post(text))
                    except RasaUnavailable as err:
                        if not err.retryable or attempt >= self._retries:
                            raise
                    await asyncio.sleep(self._backoff * 2**attempt)
                    attempt += 1
        except TimeoutError as err:
            raise RasaUnavailable("timeout", retryable=False) from err

    async def _post(self, text: str) -> Any:
        try:
            response = await self._client.post(self._url, json={"text": text},
                                               params=self._params, timeout=self._timeout)
        except httpx.TimeoutException as err:
            raise RasaUnavailable("timeout", retryable=True) from err
        except httpx.ConnectError as err:
            raise RasaUnavailable("error", retryable=True) from err
        except httpx.HTTPError as err:
            raise RasaUnavailable("error", retryable=False) from err
        if response.status_code >= 500:
            raise RasaUnavailable("error", retryable=True, status=response.status_code)
        if response.status_code != 200:
            raise RasaUnavailable("error", retryable=False, status=response.status_code)
        try:
            return response.json()
        except ValueError as err:
            raise RasaUnavailable("error", retryable=False, status=200) from err

    async def _degrade(self, text: str, reason: Reason) -> IntentPrediction:
        FALLBACKS.labels(reason=reason).inc()
        prediction = await self._fallback.classify(text)
        return dataclasses.replace(prediction, backend=DEGRADED_BACKEND, degraded=True)


def parse_response(body: Any) -> IntentPrediction:
    """Map Rasa's /model/parse JSON to an IntentPrediction (`nlu_fallback` -> out_of_scope).

    A body without an intent object is a failure (falls back), not an out-of-scope answer.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("intent"), Mapping):
        raise RasaUnavailable("error", retryable=False, status=200)
    intent = body["intent"]
    ranking: dict[str, float] = {}
    for item in body.get("intent_ranking") or ():
        if isinstance(item, Mapping) and item.get("name"):
            name = _intent_name(item["name"])
            ranking[name] = max(ranking.get(name, 0.0), _confidence(item.get("confidence")))
    return IntentPrediction(
        intent=_intent_name(intent.get("name")),
        confidence=_confidence(intent.get("confidence")),
        ranking=tuple(sorted(ranking.items(), key=lambda pair: pair[1], reverse=True)),
        backend="rasa",
    )


def _intent_name(name: Any) -> str:
    # Rasa answers name null for empty text; nlu_fallback means "not confident".
    if not name or name == RASA_FALLBACK_INTENT:
        return OUT_OF_SCOPE
    return str(name)


def _confidence(value: Any) -> float:
    try:
        confidence = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(1.0, max(0.0, confidence)) if confidence == confidence else 0.0
