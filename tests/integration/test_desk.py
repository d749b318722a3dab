"""The agent desk over both stores (Redis is real): claim, reply, resolve, return to bot,
move, relabel, transcript views. Tickets come from the real pipeline; the clock is driven."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
import redis.asyncio as redis

from bot.app.runtime import Runtime
from bot.config.loader import Config
from bot.core.envelopes import Inbound
from bot.core.session import Direction, SessionState
from bot.core.tickets import HandoffTicket, Priority, TicketStatus, TimerKind, timer_id
from bot.ops.logs import configure_logging
from bot.store import Store, Turn
from bot.store.audit import AuditChain, AuditLog, RedisAuditLog
from bot.store.redis import RedisStore
from handoff.desk import RELABEL_QUEUE, AgentDesk, DeskError
from tests.conftest import redis_url
from tests.integration.test_phi_at_rest import dump_everything
from tests.integration.test_pipeline import mailbox, portal_message
from tests.support.doubles import START, Clock, RecordingSms

pytestmark = pytest.mark.redis_store


async def patient_writes(runtime: Runtime, inbound: Inbound) -> None:
    """One patient message through the real pipeline and outbox (no worker loop)."""
    await runtime.ingress.submit(inbound)
    [entry] = await runtime.ingress.queue.read("test", count=1, block=1)
    result = await runtime.pipeline.handle(entry)
    await runtime.ingress.queue.ack(entry.entry_id)
    await runtime.dispatcher.deliver(result.outbox)


async def hand_off(runtime: Runtime, text: str = "I need to move my physical", *,
                   patient: str = "P1001", n: int = 1) -> HandoffTicket:
    await patient_writes(runtime, portal_message(text, client_id=f"{patient}-{n}",
                                                 patient=patient))
    session = await runtime.store.get_session(runtime.ingress.conversation_key("portal",
                                                                               patient))
    return await runtime.store.get_ticket(session.open_ticket_id)


async def session_of(runtime: Runtime, patient: str = "P1001"):
    return await runtime.store.get_session(runtime.ingress.conversation_key("portal", patient))


async def audit_actions(runtime: Runtime) -> list[tuple[str, str, str]]:
    return [(e.event.action, e.event.actor, e.event.ref) for e in await runtime.audit.entries()]


@asynccontextmanager
async def other_process(runtime: Runtime, backend: str) -> AsyncIterator[tuple[Store, AuditLog]]:
    """Store and audit writer as another process has them: its own Redis client."""
    if backend == "memory":  # one process is all the embedded store can serve
        yield runtime.store, runtime.audit
        return
    keys = runtime.settings.keys
    client = redis.Redis.from_url(redis_url())
    chain = AuditChain(keys.hasher.derive_key("audit-mac-v1"))
    try:
        yield (RedisStore(client, keys.sealer, keys.hasher, prefix=runtime.settings.redis_prefix),
               RedisAuditLog(client, chain, prefix=runtime.settings.redis_prefix))
    finally:
        await client.aclose()


class ReadBarrier:
    """A store whose first ticket read in each task waits until every party has read: the
    worst interleaving for a claim race (every agent sees the ticket unclaimed)."""

    def __init__(self, store: Store, barrier: asyncio.Barrier) -> None:
        self._store = store
        self._barrier = barrier
        self._seen: set[asyncio.Task] = set()

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    async def get_ticket(self, ticket_id: str) -> HandoffTicket | None:
        ticket = await self._store.get_ticket(ticket_id)
        task = asyncio.current_task()
        if task not in self._seen:
            self._seen.add(task)
            await self._barrier.wait()
        return ticket


async def test_twenty_agents_claim_at_once_and_exactly_one_owns_the_ticket(
        rt: Runtime, backend: str, clock: Clock) -> None:
    ticket = await hand_off(rt)
    renotify = timer_id(ticket.id, TimerKind.RENOTIFY, 0)
    assert await rt.store.get_timer(renotify) is not None
    barrier = asyncio.Barrier(20)
    async with other_process(rt, backend) as (other_store, other_audit):
        desks = [AgentDesk(rt.config, ReadBarrier(rt.store, barrier), rt.audit, clock=clock),
                 AgentDesk(rt.config, ReadBarrier(other_store, barrier), other_audit,
                           clock=clock)]
        results = await asyncio.wait_for(asyncio.gather(
            *(desks[n % 2].claim(ticket.id, f"U{n:03d}") for n in range(20))), 10)
    winners = [r for r in results if r.code == "claimed"]
    assert len(winners) == 1
    owner = winners[0].owner
    assert all(r.code == "already_claimed" and r.owner == owner and not r.ok
               for r in results if r is not winners[0])
    stored = await rt.store.get_ticket(ticket.id)
    assert (stored.status, stored.claimed_by, stored.claimed_at, stored.revision) == \
        (TicketStatus.CLAIMED, owner, START, 1)
    assert [(e.action, e.actor) for e in stored.history] == [("claimed", f"agent:{owner}")]
    assert [a for a in await audit_actions(rt) if a[0] == "ticket.claimed"] == \
        [("ticket.claimed", f"agent:{owner}", ticket.id)]
    assert (await rt.audit.verify()).ok
    assert await rt.store.get_timer(renotify) is None  # the claim cancelled the escalation
    again = await rt.desk.claim(ticket.id, owner)
    assert (again.code, again.ok) == ("already_yours", True)


async def test_only_the_owner_replies_and_the_patient_gets_it_on_their_channel(
        rt: Runtime, clock: Clock, config: Config) -> None:
    ticket = await hand_off(rt)
    with pytest.raises(DeskError) as refused:
        await rt.desk.reply(ticket.id, "U1", "hello")  # nobody has claimed it yet
    assert refused.value.code == "not_owner"
    await rt.desk.claim(ticket.id, "U1")
    with pytest.raises(DeskError) as refused:
        await rt.desk.reply(ticket.id, "U2", "hello")  # the Slack layer makes it a note
    assert refused.value.code == "not_owner"
    for bad in ("", "   "):
        with pytest.raises(DeskError, match="empty_reply"):
            await rt.desk.reply(ticket.id, "U1", bad)

    at = clock.advance(minutes=3)
    outbound_id = await rt.desk.reply(ticket.id, "U1", "Your visit can move to Friday 9am.")
    assert await mailbox(rt) == [config.text("handoff_ack"),
                                 "Your visit can move to Friday 9am."]
    assert await rt.store.outbox_status(outbound_id) == "sent"
    session = await session_of(rt)
    assert session.last_ack_at == at and session.state is SessionState.HANDED_OFF
    last = (await rt.store.transcript(session.conversation_id))[-1]
    assert (last.direction, last.actor, last.text, last.message_id) == \
        (Direction.OUT, "agent:U1", "Your visit can move to Friday 9am.", outbound_id)
    assert ("agent.reply", "agent:U1", f"{ticket.id}:{outbound_id}") in await audit_actions(rt)
    stored = await rt.store.get_ticket(ticket.id)
    assert [(e.action, e.detail) for e in stored.history] == [("claimed", ""),
                                                              ("reply", outbound_id)]
    assert stored.updated_at == at

    # The patient answers at once: relayed to the ticket, and no bot acknowledgement
    # follows so soon after the agent's reply.
    await patient_writes(rt, portal_message("Friday works", client_id="P1001-2"))
    assert len(await mailbox(rt)) == 2
    assert (await session_of(rt)).open_ticket_id == ticket.id


async def test_a_reply_goes_out_on_sms_to_the_patients_number(rt: Runtime) -> None:
    sms = RecordingSms()
    rt.channels.register(sms)
    await patient_writes(rt, Inbound(channel="sms", sender="+16175550123",
                                     provider_message_id="SMin1", text="call me please"))
    [ticket] = await rt.desk.open_tickets("front_desk")
    assert ticket.channel == "sms"
    await rt.desk.claim(ticket.id, "U7")
    await rt.desk.reply(ticket.id, "U7", "We will call you at 2pm.")
    assert [(m.channel, m.recipient, m.text) for m in sms.sent][-1] == \
        ("sms", "+16175550123", "We will call you at 2pm.")


async def test_a_reply_delivered_twice_with_its_id_is_sent_once(rt: Runtime) -> None:
    sms = RecordingSms()
    rt.channels.register(sms)
    await patient_writes(rt, Inbound(channel="sms", sender="+16175550123",
                                     provider_message_id="SMin1", text="call me please"))
    [ticket] = await rt.desk.open_tickets("front_desk")
    await rt.desk.claim(ticket.id, "U7")
    first = await rt.desk.reply(ticket.id, "U7", "We will call you at 2pm.",
                                message_id="slack-Ev123")
    again = await rt.desk.reply(ticket.id, "U7", "We will call you at 2pm.",
                                message_id="slack-Ev123")  # the same event, retried
    assert first == again == "slack-Ev123"
    assert [m.text for m in sms.sent].count("We will call you at 2pm.") == 1
    stored = await rt.store.get_ticket(ticket.id)
    assert [e.detail for e in stored.history if e.action == "reply"] == ["slack-Ev123"]


async def test_without_a_dispatcher_the_reply_waits_for_the_outbox_sweep(
        rt: Runtime, clock: Clock) -> None:
    desk = AgentDesk(rt.config, rt.store, rt.audit, clock=clock)
    ticket = await hand_off(rt)
    await desk.claim(ticket.id, "U1")
    outbound_id = await desk.reply(ticket.id, "U1", "On it.")
    assert await rt.store.outbox_status(outbound_id) == "pending"
    assert await rt.dispatcher.sweep() == 1
    assert (await mailbox(rt))[-1] == "On it."


async def test_resolve_closes_the_conversation_in_its_language(
        rt: Runtime, clock: Clock, config: Config) -> None:
    ticket = await hand_off(rt)
    session = await session_of(rt)
    session.language = "es"
    await rt.store.save_session(session)
    await rt.desk.claim(ticket.id, "U1")
    with pytest.raises(DeskError, match="invalid_outcome"):
        await rt.desk.resolve(ticket.id, "U1", "fixed it")
    with pytest.raises(DeskError, match="not_owner"):
        await rt.desk.resolve(ticket.id, "U2", "resolved")

    at = clock.advance(minutes=20)
    resolved = await rt.desk.resolve(ticket.id, "U1", "callback_done")
    assert (resolved.status, resolved.outcome) == (TicketStatus.RESOLVED, "callback_done")
    assert (await mailbox(rt))[-1] == config.text("resolved_closing", "es")
    session = await session_of(rt)
    assert (session.state, session.open_ticket_id, session.last_ack_at) == \
        (SessionState.CLOSED, None, at)
    transcript = await rt.store.transcript(session.conversation_id)
    assert [(e.direction, e.actor, e.text) for e in transcript[-2:]] == [
        (Direction.EVENT, "agent:U1", "resolved:callback_done"),
        (Direction.OUT, "bot", config.text("resolved_closing", "es"))]
    assert await rt.desk.open_tickets("front_desk") == []
    assert await rt.store.tickets_in_lane("front_desk") == []  # it left the lane's index
    assert (await rt.store.get_ticket(ticket.id)).history[-1].detail == "callback_done"
    assert ("ticket.resolved", "agent:U1", f"{ticket.id}:callback_done") in \
        await audit_actions(rt)
    for kind in TimerKind:
        assert await rt.store.get_timer(timer_id(ticket.id, kind, 0)) is None
    with pytest.raises(DeskError, match="already_resolved"):
        await rt.desk.resolve(ticket.id, "U1", "resolved")
    assert (await rt.desk.claim(ticket.id, "U3")).code == "resolved"

    # The patient may write again any time: a new request, a new handoff.
    newer = await hand_off(rt, "one more thing", n=2)
    assert newer.id != ticket.id and newer.status is TicketStatus.OPEN


async def test_return_to_bot_gives_the_conversation_back(rt: Runtime, config: Config) -> None:
    ticket = await hand_off(rt)
    # Unclaimed: any agent may hand it back.
    returned = await rt.desk.return_to_bot(ticket.id, "U5")
    assert (returned.status, returned.outcome) == (TicketStatus.RESOLVED, "returned_to_bot")
    session = await session_of(rt)
    assert (session.state, session.open_ticket_id) == (SessionState.ACTIVE, None)
    assert (await mailbox(rt))[-1] == config.text("returned_to_bot", "en")
    assert [e.action for e in returned.history] == ["returned_to_bot"]
    assert ("ticket.returned_to_bot", "agent:U5", f"{ticket.id}:returned_to_bot") in \
        await audit_actions(rt)


async def test_resolving_an_older_ticket_leaves_a_newer_handoff_alone(
        rt: Runtime, config: Config) -> None:
    older = await hand_off(rt)
    session = await session_of(rt)
    newer = HandoffTicket(conversation_id=session.conversation_id, channel="portal",
                          lane="clinical", reason="emergency", note=older.note,
                          priority=Priority.EMERGENCY)
    session.open_ticket_id = newer.id
    await rt.store.commit(Turn(session=session, tickets=[newer]))
    before = await mailbox(rt)
    await rt.desk.resolve(older.id, "U1", "duplicate")
    session = await session_of(rt)
    assert (session.state, session.open_ticket_id) == (SessionState.HANDED_OFF, newer.id)
    assert await mailbox(rt) == before  # no closing message: the conversation is not closed


async def test_move_requeues_the_ticket_in_another_lane(rt: Runtime, clock: Clock,
                                                        config: Config) -> None:
    ticket = await hand_off(rt)
    await rt.desk.claim(ticket.id, "U1")
    with pytest.raises(DeskError, match="not_owner"):
        await rt.desk.move(ticket.id, "U2", "billing")
    with pytest.raises(DeskError, match="unknown_lane"):
        await rt.desk.move(ticket.id, "U1", "nowhere")
    with pytest.raises(DeskError, match="same_lane"):
        await rt.desk.move(ticket.id, "U1", "front_desk")

    at = clock.advance(minutes=10)
    moved = await rt.desk.move(ticket.id, "U1", "billing")
    assert (moved.lane, moved.status, moved.claimed_by, moved.claimed_at) == \
        ("billing", TicketStatus.OPEN, "", None)
    billing = config.queues["billing"]
    assert (moved.note.queue, moved.note.owner, moved.note.escalation) == \
        ("billing", billing.owner, (billing.backup_owner, billing.supervisor))
    assert moved.note.callback_window == ticket.note.callback_window  # the promise stands
    assert await rt.desk.open_tickets("front_desk") == []
    assert [t.id for t in await rt.desk.open_tickets("billing")] == [ticket.id]
    assert [(e.action, e.detail) for e in moved.history][-1] == ("moved", "front_desk>billing")
    assert ("ticket.moved", "agent:U1", f"{ticket.id}:front_desk>billing") in \
        await audit_actions(rt)
    # Escalation starts again on the billing lane's SLA.
    assert await rt.store.get_timer(timer_id(ticket.id, TimerKind.RENOTIFY, 0)) is None
    renotify = await rt.store.get_timer(timer_id(ticket.id, TimerKind.RENOTIFY, 1))
    assert renotify.due == at + timedelta(minutes=billing.ack_sla_minutes)
    assert (await rt.desk.claim(ticket.id, "U9")).code == "claimed"  # anyone may claim it


async def test_relabel_records_the_contact_reason_and_a_sealed_review_item(
        rt: Runtime, clock: Clock, backend: str) -> None:
    ticket = await hand_off(rt, "QX-RELABEL-7 my bill is wrong")
    with pytest.raises(DeskError, match="unknown_intent"):
        await rt.desk.relabel(ticket.id, "U1", "astrology")
    at = clock.advance(minutes=1)
    relabelled = await rt.desk.relabel(ticket.id, "U1", "billing_question")
    with pytest.raises(DeskError, match="same_intent"):
        await rt.desk.relabel(ticket.id, "U2", "billing_question")
    assert relabelled.corrected_intent == "billing_question"
    assert relabelled.history[-1].detail == "unclassified>billing_question"
    [item] = await rt.desk.relabelled()
    assert item.item_id == ticket.id and item.at == at
    assert item.record == {
        "ticket_id": ticket.id, "conversation_id": ticket.conversation_id,
        "original_intent": "unclassified", "corrected_intent": "billing_question",
        "agent": "U1", "at": at.isoformat(), "language": ticket.note.language,
        "channel": "portal", "text": "QX-RELABEL-7 my bill is wrong"}
    assert ("ticket.relabelled", "agent:U1", f"{ticket.id}:unclassified>billing_question") in \
        await audit_actions(rt)
    # Relabelling again replaces the ticket's item.
    await rt.desk.relabel(ticket.id, "U2", "complaint")
    [item] = await rt.store.review_items(RELABEL_QUEUE)
    assert (item.record["corrected_intent"], item.record["agent"]) == ("complaint", "U2")
    if backend == "redis":
        client = redis.Redis.from_url(redis_url())
        try:
            everything = await dump_everything(client)
        finally:
            await client.aclose()
        ours = [(k, v) for k, v in everything if k.startswith(rt.settings.redis_prefix)]
        assert any(":rv:relabel" in k for k, _ in ours)
        for key, value in ours:
            assert "relabel-7" not in key.lower() and "relabel-7" not in value.lower()


async def test_every_transcript_view_is_audited(rt: Runtime) -> None:
    ticket = await hand_off(rt)
    with pytest.raises(DeskError, match="invalid_agent"):
        await rt.desk.transcript(ticket.id, "not an id!")
    for agent in ("U1", "U2"):
        entries = await rt.desk.transcript(ticket.id, agent)
        assert entries[0].text == "I need to move my physical"
    views = [a for a in await audit_actions(rt) if a[0] == "transcript.read"]
    assert views == [("transcript.read", "agent:U1", ticket.id),
                     ("transcript.read", "agent:U2", ticket.id)]
    with pytest.raises(DeskError, match="not_found"):
        await rt.desk.transcript("0000000000000000", "U1")


async def test_open_tickets_come_in_serving_order_without_resolved_ones(
        rt: Runtime, clock: Clock) -> None:
    first = await hand_off(rt, "first", patient="P1001")
    clock.advance(seconds=1)  # tickets are stamped by the pipeline's clock
    second = await hand_off(rt, "second", patient="P1002")
    session = await session_of(rt, "P1002")

    def extra(minutes: int, priority: Priority) -> HandoffTicket:
        return HandoffTicket(conversation_id=session.conversation_id, channel="portal",
                             lane="front_desk", reason="r", note=second.note,
                             priority=priority,
                             created_at=first.created_at + timedelta(minutes=minutes))

    urgent, emergency = extra(5, Priority.URGENT), extra(6, Priority.EMERGENCY)
    await rt.store.commit(Turn(session=session, tickets=[urgent, emergency]))
    assert [t.id for t in await rt.desk.open_tickets("front_desk")] == \
        [emergency.id, urgent.id, first.id, second.id]
    await rt.desk.claim(urgent.id, "U1")  # claimed tickets stay open
    await rt.desk.resolve(emergency.id, "U1", "referred")
    assert [t.id for t in await rt.desk.open_tickets("front_desk")] == \
        [urgent.id, first.id, second.id]
    with pytest.raises(DeskError, match="unknown_lane"):
        await rt.desk.open_tickets("nowhere")


async def test_the_desk_logs_and_errors_carry_no_patient_text(rt: Runtime, capsys) -> None:
    configure_logging(production=True)
    ticket = await hand_off(rt, "CANARY-DESK-19 my secret")
    await rt.desk.claim(ticket.id, "U1")
    await rt.desk.reply(ticket.id, "U1", "CANARY-AGENT-23 your results")
    try:
        await rt.desk.reply(ticket.id, "U2", "CANARY-AGENT-23 again")
    except DeskError as err:
        assert str(err) == "not_owner"
    await rt.desk.relabel(ticket.id, "U1", "test_results")
    await rt.desk.move(ticket.id, "U1", "clinical")
    await rt.desk.claim(ticket.id, "U1")
    await rt.desk.resolve(ticket.id, "U1", "resolved")
    logs = capsys.readouterr().err
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert {"ticket claimed", "agent reply committed", "ticket moved",
            "ticket relabelled", "ticket resolved"} <= {e.get("event") for e in events}
    assert "CANARY" not in logs and "P1001" not in logs
