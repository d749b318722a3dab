"""Canary scan: after real conversations, no Redis key or value holds the canary name,
phone number, email, date of birth or message text; neither do the logs."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import redis.asyncio as redis

from bot.core.envelopes import Inbound
from bot.ops.logs import configure_logging
from tests.conftest import redis_url
from tests.support.doubles import RecordingSms

pytestmark = pytest.mark.redis_store

CANARY_NAME = "Zebedee Quillfeather"
CANARY_DOB = "1971-05-09"
CANARY_PHONE = "+16175550199"
CANARY_EMAIL = "zebedee.quill@example.org"
CANARY_TEXT = "CANARY-MSG-5521 please call me back"
NEEDLES = ["zebedee", "quillfeather", "6175550199", "5550199", CANARY_DOB, "05/09/1971",
           "canary-msg-5521", "please call me back", "quill@example"]


async def dump_everything(client: redis.Redis) -> list[tuple[str, str]]:
    """(key, value as text) for every key in the database, whatever its type."""
    found = []
    async for raw_key in client.scan_iter(count=1000):
        kind = (await client.type(raw_key)).decode()
        if kind == "string":
            values = [await client.get(raw_key)]
        elif kind == "list":
            values = await client.lrange(raw_key, 0, -1)
        elif kind == "hash":
            values = [v for pair in (await client.hgetall(raw_key)).items() for v in pair]
        elif kind == "zset":
            values = await client.zrange(raw_key, 0, -1)
        elif kind == "set":
            values = list(await client.smembers(raw_key))
        elif kind == "stream":
            values = [json.dumps({k.decode(): v.decode() for k, v in fields.items()})
                      for _, fields in await client.xrange(raw_key)]
        else:
            values = []
        text = " ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                        for v in values if v is not None)
        found.append((raw_key.decode("utf-8", "replace"), text))
    return found


@pytest.mark.parametrize("backend", ["redis"])
async def test_no_phi_in_redis_keys_values_or_logs(config_dir: Path, live, backend,
                                                   capsys) -> None:
    configure_logging(production=True)
    runtime = live.runtime
    sms = RecordingSms()
    runtime.channels.register(sms)

    # A failed sign-in (counters keyed by name) and a successful one with the canary patient.
    failed = await live.client.post("/portal/api/signin",
                                    json={"name": CANARY_NAME, "dob": "1971-05-10"})
    assert failed.status_code == 401
    auth = await live.sign_in(CANARY_NAME, CANARY_DOB)
    sent = await live.client.post("/portal/api/messages", headers=auth, json={
        "client_message_id": "canary-0001",
        "text": f"{CANARY_TEXT}. I am {CANARY_NAME}, born {CANARY_DOB}, {CANARY_PHONE}, "
                f"{CANARY_EMAIL}"})
    assert sent.status_code == 202
    assert len(await live.wait_for_replies(auth, 1)) == 1

    # The same patient by SMS: the phone number is the conversation's address.
    await runtime.ingress.submit(Inbound(channel="sms", sender=CANARY_PHONE,
                                         provider_message_id="SMcanary",
                                         text=f"{CANARY_TEXT} from {CANARY_NAME}"))
    for _ in range(200):
        if sms.sent:
            break
        await asyncio.sleep(0.05)
    assert sms.sent and sms.sent[0].recipient == CANARY_PHONE

    client = redis.Redis.from_url(redis_url())
    try:
        everything = await dump_everything(client)
    finally:
        await client.aclose()
    ours = [(k, v) for k, v in everything if k.startswith(runtime.settings.redis_prefix)]
    assert len(ours) >= 10, "the scan should see this test's keys"
    for key, value in everything:
        for needle in NEEDLES:
            assert needle not in key.lower(), f"PHI {needle!r} in key name {key!r}"
            assert needle not in value.lower(), f"PHI {needle!r} in the value of {key!r}"
    # The portal session id inside the patient's token is not a key name either.
    token = auth["authorization"].split()[1]
    sid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["sid"]
    assert not any(sid in key for key, _ in everything)
    logs = capsys.readouterr()
    for needle in NEEDLES:
        assert needle not in (logs.err + logs.out).lower(), f"PHI {needle!r} in the logs"


async def test_engine_conversations_leave_no_phi_in_redis_or_logs(config_dir: Path, keys,
                                                                  prefix: str, capsys) -> None:
    """Identity check, a refill script (free-text answers) and a booking, through the engine
    on real Redis: collected fields, names and dates are sealed; key names are hashes."""
    from bot.app.simulate import Scenario, simulate
    from bot.config.loader import load_config
    from bot.config.settings import Settings

    with (config_dir / "patients.yml").open("a", encoding="utf-8") as patients:
        patients.write(f"  - id: CANARY-P77\n    name: {CANARY_NAME}\n    dob: {CANARY_DOB}\n"
                       f"    phone: \"{CANARY_PHONE}\"\n    email: {CANARY_EMAIL}\n")
    config = load_config(config_dir)
    configure_logging(production=True)
    settings = Settings(redis_url=redis_url(), redis_prefix=prefix, keys=keys)
    sms = {"channel": "sms", "sender": CANARY_PHONE}
    scenario = Scenario.model_validate({
        "name": "canary", "start": "2026-12-07T10:00:00-05:00", "turns": [
            {**sms, "text": "I need a refill please"},
            {**sms, "text": CANARY_NAME},
            {**sms, "text": "05/09/1971"},
            {**sms, "text": "CANARYMED-77 ointment", "expect": {"state": "in_script"}},
            {**sms, "text": "Quillfeather pharmacy on Canary Road"},
            {**sms, "text": "3", "expect": {"handoff": "pharmacy"}},
            {"channel": "portal", "portal_patient": "CANARY-P77", "text": "book a flu shot"},
            {"channel": "portal", "portal_patient": "CANARY-P77", "text": "next wednesday"},
            {"channel": "portal", "portal_patient": "CANARY-P77", "text": "1"},
        ], "expect_bookings": 1})
    report = await simulate(scenario, config, settings)
    assert report.failures == []
    assert report.handoffs[0]["note"]["collected"]["medication"] == "CANARYMED-77 ointment"

    client = redis.Redis.from_url(redis_url())
    try:
        everything = await dump_everything(client)
    finally:
        await client.aclose()
    ours = [(k, v) for k, v in everything if k.startswith(prefix)]
    assert any(":slot:" in key or "slot" in key for key, _ in ours), "the booking is stored"
    needles = [*NEEDLES, "canarymed", "canary road", "canary-p77"]
    for key, value in ours:
        for needle in needles:
            assert needle not in key.lower(), f"PHI {needle!r} in key name {key!r}"
            assert needle not in value.lower(), f"PHI {needle!r} in the value of {key!r}"
    logs = capsys.readouterr()
    for needle in needles:
        assert needle not in (logs.err + logs.out).lower(), f"PHI {needle!r} in the logs"
