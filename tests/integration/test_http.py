"""The HTTP app: health, metrics, security headers, and the portal API's handling of bad
input, sessions and duplicates (real uvicorn server, real workers)."""

from __future__ import annotations

import asyncio
import json

import pytest

MESSAGES = "/portal/api/messages"


async def send(live, auth, text: str = "hello", client_id: str = "client-0001", **kwargs):
    return await live.client.post(MESSAGES, headers=auth,
                                  json={"client_message_id": client_id, "text": text}, **kwargs)


async def test_health_readiness_and_metrics(live) -> None:
    assert (await live.client.get("/healthz")).json() == {"status": "ok"}
    ready = await live.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"store": True, "workers": True}}
    auth = await live.sign_in()
    assert (await send(live, auth)).status_code == 202
    await live.wait_for_replies(auth, 1)
    metrics = (await live.client.get("/metrics")).text
    for name in ('patientbot_messages_in_total{channel="portal"}',
                 'patientbot_messages_out_total{channel="portal"}',
                 'patientbot_handoffs_total{lane="front_desk",priority="normal"}',
                 "patientbot_pipeline_latency_seconds_bucket"):
        assert name in metrics


async def test_security_headers(live) -> None:
    page = await live.client.get("/portal/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    api = await live.client.post("/portal/api/signin", json={"name": "x", "dob": "y"})
    assert api.headers["cache-control"] == "no-store"


async def test_sign_ins_and_transcript_reads_are_audited(live) -> None:
    await live.client.post("/portal/api/signin", json={"name": "Maria Lopez", "dob": "1999-01-01"})
    auth = await live.sign_in()
    await live.history(auth)
    conv = live.runtime.ingress.conversation_key("portal", "P1001").id
    events = [(e.event.action, e.event.actor, e.event.conversation)
              for e in await live.runtime.audit.entries()]
    assert events == [("portal.signin_failed", "patient", ""),
                      ("portal.signin", "patient", conv),
                      ("transcript.read", "patient", conv)]
    assert (await live.runtime.audit.verify()).ok


async def test_sign_in_answers_the_same_whether_or_not_the_patient_exists(live) -> None:
    wrong_dob = await live.client.post("/portal/api/signin",
                                       json={"name": "Maria Lopez", "dob": "1984-03-13"})
    nobody = await live.client.post("/portal/api/signin",
                                    json={"name": "No Such Person", "dob": "1984-03-12"})
    assert wrong_dob.status_code == nobody.status_code == 401
    assert wrong_dob.json() == nobody.json()


async def test_sign_in_tolerates_case_accents_spacing_and_us_dates(live) -> None:
    ok = await live.client.post("/portal/api/signin",
                                json={"name": "  maria   LÓPEZ ", "dob": "03/12/1984"})
    assert ok.status_code == 200
    assert set(ok.json()) == {"token", "display_name", "expires_at", "welcome"}


async def test_successful_sign_ins_are_never_locked_out(live) -> None:
    for _ in range(8):
        await live.sign_in()


async def test_failed_sign_in_attempts_are_limited(live) -> None:
    statuses = [(await live.client.post("/portal/api/signin",
                                        json={"name": "Maria Lopez", "dob": f"1984-01-{d:02d}"}
                                        )).status_code for d in range(1, 8)]
    assert statuses == [401] * 5 + [429] * 2
    # Even the right details are refused while locked out.
    right = await live.client.post("/portal/api/signin",
                                   json={"name": "Maria Lopez", "dob": "1984-03-12"})
    assert right.status_code == 429


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({"content-type": "text/plain"}, b'{"text": "hi", "client_message_id": "client-0001"}', 415),
    ({"content-type": "application/json"}, b'{"text": ', 400),
    ({"content-type": "application/json"}, b'{"text": "\xff\xfe"}', 400),
    ({"content-type": "application/json"}, b'["a list"]', 422),
    ({"content-type": "application/json"}, b'{"client_message_id": "client-0001"}', 422),
    ({"content-type": "application/json"}, b'{"text": "hi", "client_message_id": "x"}', 422),
    ({"content-type": "application/json"}, b'{"text": "hi", "client_message_id": "<a>bcdefgh"}',
     422),
    ({"content-type": "application/json"}, b'{"text": "' + b"a" * 70_000 + b'"}', 413),
    ({"content-type": "application/json"},
     b'{"text": "bad \\ud800 text", "client_message_id": "client-0001"}', 422),
])
async def test_bad_messages_are_refused_and_nothing_is_queued(live, headers, body,
                                                              status) -> None:
    auth = await live.sign_in()
    response = await live.client.post(MESSAGES, headers={**auth, **headers}, content=body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert "Traceback" not in response.text
    await asyncio.sleep(0.2)
    assert (await live.history(auth))["messages"] == []


async def test_a_message_over_the_configured_limit_is_refused_clearly(live, config) -> None:
    auth = await live.sign_in()
    limit = config.app.limits.max_message_chars
    response = await send(live, auth, "a" * (limit + 1))
    assert response.status_code == 413
    assert str(limit) in response.json()["error"]
    assert (await send(live, auth, "a" * limit)).status_code == 202


@pytest.mark.parametrize("authorization", [None, "Bearer nonsense", "Basic abc",
                                           "Bearer eyJzaWQiOiJ4In0.forged.signature"])
async def test_requests_without_a_valid_session_get_401(live, authorization) -> None:
    headers = {"authorization": authorization} if authorization else {}
    for response in [await live.client.post(MESSAGES, headers=headers,
                                            json={"text": "hi", "client_message_id": "abcdefgh"}),
                     await live.client.get("/portal/api/history", headers=headers),
                     await live.client.get("/portal/api/stream", headers=headers)]:
        assert response.status_code == 401
        assert "error" in response.json()


async def test_the_same_client_message_sent_five_times_is_answered_once(live) -> None:
    auth = await live.sign_in()
    for _ in range(5):
        assert (await send(live, auth, "please call me", client_id="retry-abc-1")).status_code \
            == 202
    await live.wait_for_replies(auth, 1)
    await asyncio.sleep(0.5)
    history = (await live.history(auth))["messages"]
    assert [m["direction"] for m in history] == ["in", "out"]


async def test_a_flood_from_one_patient_is_limited_and_nothing_vanishes(live, config) -> None:
    auth = await live.sign_in()
    codes = [(await send(live, auth, f"message {n}", client_id=f"flood-{n:04d}")).status_code
             for n in range(100)]
    allowed = config.channels.limits.per_sender_per_minute
    assert codes.count(202) == allowed and codes.count(429) == 100 - allowed
    assert codes[:allowed] == [202] * allowed  # the first ones go through, then a clear 429
    assert await live.runtime.ingress.queue.pending() <= allowed


async def test_replies_stream_as_server_sent_events(live, config) -> None:
    auth = await live.sign_in()
    cursor = (await live.history(auth))["cursor"]
    events = []
    async with live.client.stream("GET", f"/portal/api/stream?cursor={cursor}",
                                  headers=auth) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert (await send(live, auth, "hello there")).status_code == 202
        block = ""
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                block = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and block == "message":
                events.append(json.loads(line[5:]))
                break
    assert events[0]["text"] == config.text("handoff_ack")
    assert events[0]["cursor"] == cursor + 1


async def test_sign_out_ends_the_session(live) -> None:
    auth = await live.sign_in()
    assert (await live.client.post("/portal/api/signout", headers=auth)).status_code == 204
    assert (await live.client.get("/portal/api/history", headers=auth)).status_code == 401


@pytest.fixture
def short_sessions(edit_config) -> None:
    edit_config("idle_timeout_minutes: 15", "idle_timeout_minutes: 0.02")  # 1.2 s
    edit_config("absolute_timeout_minutes: 120", "absolute_timeout_minutes: 0.05")  # 3 s


async def test_idle_sessions_time_out(short_sessions, live) -> None:
    auth = await live.sign_in()
    assert (await live.client.get("/portal/api/history", headers=auth)).status_code == 200
    await asyncio.sleep(1.5)
    expired = await live.client.get("/portal/api/history", headers=auth)
    assert expired.status_code == 401
    assert "sign in again" in expired.json()["error"]


async def test_sessions_end_at_the_absolute_timeout_despite_activity(short_sessions,
                                                                     live) -> None:
    auth = await live.sign_in()
    statuses = []
    for _ in range(9):  # active every 0.5 s, so never idle
        statuses.append((await live.client.get("/portal/api/history", headers=auth)).status_code)
        await asyncio.sleep(0.5)
    assert statuses[0] == 200 and statuses[-1] == 401
