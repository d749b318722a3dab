"""The pipeline end to end through real workers, over both stores (Redis is real)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from bot.app.runtime import Runtime
from bot.config.loader import load_config
from bot.core.envelopes import Inbound
from bot.core.session import Direction, IdentityStatus, SessionState
from bot.engine.decision import FOLLOWUP_ACK_INTERVAL, FrontDeskHandoff
from bot.ops.logs import configure_logging
from tests.conftest import run_workers_until

pytestmark = pytest.mark.redis_store


def portal_message(text: str, *, client_id: str, patient: str = "P1001") -> Inbound:
    return Inbound(channel="portal", sender=patient, provider_message_id=f"sid:{client_id}",
                   text=text, verified_patient=patient)


async def mailbox(runtime: Runtime, patient: str = "P1001") -> list[str]:
    conv = runtime.ingress.conversation_key("portal", patient).id
    return [item.text for item in await runtime.store.mailbox_read(conv, after=0)]


def replies(count: int, runtime: Runtime, patient: str = "P1001"):
    async def done() -> bool:
        return len(await mailbox(runtime, patient)) >= count and \
            await runtime.ingress.queue.pending() == 0
    return done


async def test_a_new_request_goes_to_front_desk_with_a_note_and_a_reply(runtime, config) -> None:
    await runtime.ingress.submit(portal_message("I need to move my physical", client_id="c1"))
    await run_workers_until(runtime, replies(1, runtime))

    assert await mailbox(runtime) == [config.text("handoff_ack")]
    [ticket] = await runtime.store.tickets_in_lane("front_desk")
    assert ticket.reason == "triage_not_enabled"
    assert ticket.note.summary == "I need to move my physical"
    assert ticket.note.checks_done.startswith("identity verified")
    key = runtime.ingress.conversation_key("portal", "P1001")
    session = await runtime.store.get_session(key)
    assert session.state is SessionState.HANDED_OFF
    assert session.open_ticket_id == ticket.id
    assert session.identity is IdentityStatus.VERIFIED and session.patient_id == "P1001"
    transcript = await runtime.store.transcript(key.id)
    assert [(e.direction, e.actor) for e in transcript] == [
        (Direction.IN, "patient"), (Direction.EVENT, "system"), (Direction.OUT, "bot")]
    assert transcript[1].text == f"handoff:front_desk:{ticket.reason}"
    audit = [(e.event.action, e.event.conversation) for e in await runtime.audit.entries()]
    assert audit == [("conversation.turn", key.id), ("handoff.created", key.id),
                     ("reply.sent", key.id)]
    assert (await runtime.audit.verify()).ok


async def test_follow_ups_join_the_open_ticket_and_are_acknowledged_sparingly(
        runtime, config) -> None:
    key = runtime.ingress.conversation_key("portal", "P1001")

    def processed(seq: int):
        async def done() -> bool:
            session = await runtime.store.get_session(key)
            return session is not None and session.last_seq == seq and \
                await runtime.ingress.queue.pending() == 0
        return done

    for i in range(3):
        await runtime.ingress.submit(portal_message(f"message {i}", client_id=f"c{i}"))
    await run_workers_until(runtime, processed(3))
    # A burst right after the handoff is not answered by a burst of acknowledgements.
    assert await mailbox(runtime) == [config.text("handoff_ack")]

    session = await runtime.store.get_session(key)
    session.last_ack_at -= FOLLOWUP_ACK_INTERVAL + timedelta(seconds=1)
    await runtime.store.save_session(session)
    await runtime.ingress.submit(portal_message("are you there?", client_id="c3"))
    await run_workers_until(runtime, processed(4))
    assert await mailbox(runtime) == [config.text("handoff_ack"),
                                      config.text("handoff_followup")]
    assert len(await runtime.store.tickets_in_lane("front_desk")) == 1
    transcript = await runtime.store.transcript(key.id)
    assert [e.text for e in transcript if e.direction is Direction.IN] == \
        ["message 0", "message 1", "message 2", "are you there?"]


async def test_the_same_provider_message_five_times_has_one_outcome(runtime) -> None:
    for _ in range(5):
        await runtime.ingress.submit(portal_message("hello", client_id="same-id"))
    conv = runtime.ingress.conversation_key("portal", "P1001").id

    async def done() -> bool:
        session = await runtime.store.get_session(
            runtime.ingress.conversation_key("portal", "P1001"))
        return session is not None and session.last_seq == 5 and \
            await runtime.ingress.queue.pending() == 0

    await run_workers_until(runtime, done, workers=2)
    assert len(await mailbox(runtime)) == 1
    assert len(await runtime.store.tickets_in_lane("front_desk")) == 1
    assert [e.direction for e in await runtime.store.transcript(conv)].count(Direction.IN) == 1


async def test_order_is_kept_across_two_workers(runtime) -> None:
    texts = [f"part {i}" for i in range(25)]
    for i, text in enumerate(texts):
        await runtime.ingress.submit(portal_message(text, client_id=f"order-{i}"))
    conv = runtime.ingress.conversation_key("portal", "P1001").id

    async def done() -> bool:
        entries = await runtime.store.transcript(conv)
        return sum(e.direction is Direction.IN for e in entries) == len(texts)

    await run_workers_until(runtime, done, workers=2)
    received = [e.text for e in await runtime.store.transcript(conv)
                if e.direction is Direction.IN]
    assert received == texts


class ExplodingStep:
    """A decision step that fails with patient data in the exception text."""

    def __init__(self, config) -> None:
        pass

    async def decide(self, inbound, session, *, now):
        raise ValueError(f"cannot handle {inbound.text!r} from {inbound.sender}")


async def test_error_boundary_hands_off_politely_and_leaks_nothing(config, settings,
                                                                   capsys) -> None:
    configure_logging(production=True)
    runtime = Runtime.build(config, settings, decision_step=ExplodingStep)
    try:
        await runtime.ingress.submit(portal_message("CANARY-7731 my secret", client_id="boom1",
                                                    patient="P1002"))
        await run_workers_until(runtime, replies(1, runtime, "P1002"))
    finally:
        await runtime.close()
    [reply] = await mailbox(runtime, "P1002")
    assert reply == config.text("error_fallback")
    [ticket] = await runtime.store.tickets_in_lane("front_desk")
    assert ticket.reason == "processing_error"
    logs = capsys.readouterr().err
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(e.get("error_type") == "ValueError" for e in events)
    assert "CANARY-7731" not in logs and "P1002" not in logs and "cannot handle" not in logs


async def test_a_redelivered_entry_is_not_processed_twice(runtime) -> None:
    entry = await runtime.ingress.submit(portal_message("hello", client_id="redeliver"))
    first = await runtime.pipeline.handle(entry)
    second = await runtime.pipeline.handle(entry)
    assert (first.outcome, len(first.outbox)) == ("processed", 1)
    assert (second.outcome, second.outbox) == ("duplicate", ())


async def test_a_store_failure_leaves_the_entry_pending_until_it_succeeds(runtime,
                                                                          monkeypatch) -> None:
    real_commit = runtime.store.commit
    failures = 0

    async def failing_commit(turn, **options):
        nonlocal failures
        failures += 1
        raise ConnectionError("store unavailable")

    monkeypatch.setattr(runtime.store, "commit", failing_commit)
    await runtime.ingress.submit(portal_message("hello", client_id="retry-1"))

    async def failed_once() -> bool:
        return failures >= 1

    await run_workers_until(runtime, failed_once)
    assert await runtime.ingress.queue.pending() == 1  # not acknowledged, not lost
    assert await mailbox(runtime) == []

    monkeypatch.setattr(runtime.store, "commit", real_commit)
    await run_workers_until(runtime, replies(1, runtime), reclaim_idle=0.05)
    assert len(await mailbox(runtime)) == 1
    assert await runtime.ingress.queue.pending() == 0


async def test_an_entry_that_cannot_be_opened_is_set_aside(runtime) -> None:
    await runtime.ingress.queue.append("portal:abc", "pb1.gone.AAAA")

    async def set_aside() -> bool:
        return await runtime.ingress.queue.dead_letters() == 1

    await run_workers_until(runtime, set_aside)
    assert await runtime.ingress.queue.pending() == 0


@pytest.mark.parametrize("backend", ["redis"])
async def test_high_concurrency_does_not_exhaust_the_redis_pool(config_dir, settings, backend,
                                                                edit_config) -> None:
    edit_config("concurrency: 32", "concurrency: 256")
    runtime = Runtime.build(load_config(config_dir), settings, decision_step=FrontDeskHandoff)
    errors_before = _pipeline_errors()
    try:
        for i in range(600):
            await runtime.ingress.submit(portal_message("hi", client_id=f"m-{i}",
                                                        patient=f"P{i}"))

        async def all_done() -> bool:
            return await runtime.ingress.queue.pending() == 0 and \
                len(await runtime.store.tickets_in_lane("front_desk")) == 600

        await run_workers_until(runtime, all_done, timeout=60)
    finally:
        await runtime.close()
    assert _pipeline_errors() == errors_before


def _pipeline_errors() -> float:
    from prometheus_client import REGISTRY

    return sum(sample.value for metric in REGISTRY.collect()
               if metric.name == "patientbot_pipeline_errors"
               for sample in metric.samples if sample.name.endswith("_total"))


class HangingStep:
    def __init__(self, config) -> None:
        pass

    async def decide(self, inbound, session, *, now):
        await asyncio.sleep(3600)


async def test_a_hanging_decision_step_is_handed_off(config_dir, settings, edit_config) -> None:
    edit_config("lock_ttl_seconds: 30", "lock_ttl_seconds: 1")
    runtime = Runtime.build(load_config(config_dir), settings, decision_step=HangingStep)
    try:
        await runtime.ingress.submit(portal_message("hello?", client_id="hang-1"))
        await run_workers_until(runtime, replies(1, runtime))
        [ticket] = await runtime.store.tickets_in_lane("front_desk")
    finally:
        await runtime.close()
    assert await mailbox(runtime) == [load_config(config_dir).text("error_fallback")]
    assert ticket.reason == "processing_error"


async def test_an_earlier_message_reclaimed_after_a_later_one_is_not_lost(runtime) -> None:
    """Message 1 sits pending on a dead worker; message 2 reaches a live worker first. The
    live worker reclaims message 1 and processes both, in order, without waiting out
    order_wait_seconds."""
    await runtime.ingress.submit(portal_message("first", client_id="first-1"))
    await runtime.ingress.queue.read("dead-worker", count=1, block=0.1)
    await runtime.ingress.submit(portal_message("second", client_id="second-1"))
    conv = runtime.ingress.conversation_key("portal", "P1001").id

    async def both() -> bool:
        entries = await runtime.store.transcript(conv)
        return sum(e.direction is Direction.IN for e in entries) == 2 and \
            await runtime.ingress.queue.pending() == 0

    started = asyncio.get_running_loop().time()
    await run_workers_until(runtime, both, reclaim_idle=0.5, timeout=20)
    assert asyncio.get_running_loop().time() - started < 10  # far below order_wait (60 s)
    assert [e.text for e in await runtime.store.transcript(conv)
            if e.direction is Direction.IN] == ["first", "second"]


async def test_a_message_past_the_order_wait_is_processed_not_dropped(config_dir, settings,
                                                                    edit_config) -> None:
    edit_config("order_wait_seconds: 60", "order_wait_seconds: 0.3")
    runtime = Runtime.build(load_config(config_dir), settings, decision_step=FrontDeskHandoff)
    try:
        await runtime.ingress.submit(portal_message("first", client_id="first-1"))
        await runtime.ingress.queue.read("dead-worker", count=1, block=0.1)  # stuck for now
        await runtime.ingress.submit(portal_message("second", client_id="second-1"))
        conv = runtime.ingress.conversation_key("portal", "P1001").id

        def received(count: int):
            async def done() -> bool:
                entries = await runtime.store.transcript(conv)
                return sum(e.direction is Direction.IN for e in entries) == count
            return done

        await run_workers_until(runtime, received(1))  # "second" goes ahead after 0.3 s
        await run_workers_until(runtime, received(2), reclaim_idle=0.1)  # "first" still counts
        texts = [e.text for e in await runtime.store.transcript(conv)
                 if e.direction is Direction.IN]
    finally:
        await runtime.close()
    assert texts == ["second", "first"]


async def test_an_entry_that_keeps_failing_goes_to_dead_letters(runtime, monkeypatch) -> None:
    async def failing_commit(turn, **options):
        raise RuntimeError("commit keeps failing")  # a bug or an outage that never ends

    monkeypatch.setattr(runtime.store, "commit", failing_commit)
    await runtime.ingress.submit(portal_message("hello", client_id="doomed-1"))

    async def set_aside() -> bool:
        return await runtime.ingress.queue.dead_letters() == 1

    await run_workers_until(runtime, set_aside, reclaim_idle=0.05, timeout=30)
    assert await runtime.ingress.queue.pending() == 0


class NeverAnswers:
    """An ingress queue whose reads block until cancelled (a backend that holds the read);
    everything else goes to the real queue."""

    def __init__(self, queue) -> None:  # noqa: ANN001
        self._queue = queue
        self.cancelled_reads = 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._queue, name)

    async def read(self, consumer: str, *, count: int, block: float) -> list:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_reads += 1
            raise
        return []


async def test_a_worker_stops_without_waiting_out_its_blocking_read(runtime) -> None:
    queue = NeverAnswers(runtime.ingress.queue)
    runtime.ingress.queue = queue
    stop = asyncio.Event()
    worker = asyncio.create_task(runtime.new_worker("stopper").run(stop))
    await asyncio.sleep(0.1)  # the worker is inside its read
    stop.set()
    # Well inside the read's own deadline (READ_BLOCK_SECONDS + BACKEND_DEADLINE).
    async with asyncio.timeout(2):
        await worker
    assert queue.cancelled_reads == 1
