"""Escalation timers over both stores (Redis is real), on a driven clock: no sleeps."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as redis

from bot.app.runtime import Runtime
from bot.config.loader import Config
from bot.config.settings import Settings
from bot.core.tickets import HandoffNote, HandoffTicket, Priority, TicketStatus, TimerKind
from bot.engine.decision import FrontDeskHandoff
from bot.engine.escalation import EscalationPolicy
from bot.store import Turn
from bot.store.audit import AuditChain, RedisAuditLog
from bot.store.redis import RedisStore
from handoff.escalation import EscalationSweeper, Notification, RecordingNotifier
from tests.conftest import redis_url, run_workers_until
from tests.integration.test_desk import hand_off, session_of
from tests.support.doubles import START, Clock

pytestmark = pytest.mark.redis_store

NEW_YORK = ZoneInfo("America/New_York")


def sent(runtime: Runtime) -> list[tuple[TimerKind, str]]:
    return [(n.kind, n.to) for n in runtime.escalations.notifier.sent]


async def sweep_at(runtime: Runtime, clock: Clock, at: datetime) -> int:
    clock.now = at
    return await runtime.escalations.sweep()


async def ticket_with(runtime: Runtime, clock: Clock, *, lane: str = "front_desk",
                      priority: Priority = Priority.NORMAL, callback_in: timedelta | None = None,
                      patient: str = "P1001") -> HandoffTicket:
    """A ticket committed the way the pipeline commits one: with its first timers."""
    base = await hand_off(runtime, patient=patient)
    session = await session_of(runtime, patient)
    due = (clock.now + callback_in).isoformat() if callback_in else ""
    ticket = HandoffTicket(conversation_id=session.conversation_id, channel="portal",
                           lane=lane, reason="r", priority=priority,
                           note=replace(base.note, queue=lane,
                                        owner=runtime.config.queues[lane].owner or "",
                                        callback_due=due))
    session.open_ticket_id = ticket.id
    await runtime.store.commit(Turn(
        session=session, tickets=[ticket],
        timers=EscalationPolicy(runtime.config).first_timers(ticket, clock.now)))
    await runtime.desk.resolve(base.id, "U0", "duplicate")  # only `ticket` is left open
    session.open_ticket_id = ticket.id
    await runtime.store.save_session(session)
    return ticket


async def test_an_unclaimed_ticket_goes_to_renotify_then_backup_then_supervisor(
        rt: Runtime, clock: Clock, config: Config) -> None:
    ticket = await hand_off(rt)  # the pipeline scheduled its first timer in the same commit
    queue = config.queues["front_desk"]
    sla = timedelta(minutes=queue.ack_sla_minutes)
    assert await sweep_at(rt, clock, START + sla - timedelta(seconds=1)) == 0
    assert await sweep_at(rt, clock, START + sla) == 1
    assert sent(rt) == [(TimerKind.RENOTIFY, queue.owner)]
    assert await sweep_at(rt, clock, START + sla) == 0  # fired once
    assert await sweep_at(rt, clock, START + 2 * sla - timedelta(seconds=1)) == 0
    assert await sweep_at(rt, clock, START + 2 * sla) == 1
    assert await sweep_at(rt, clock, START + 3 * sla - timedelta(seconds=1)) == 0
    assert await sweep_at(rt, clock, START + 3 * sla) == 1
    assert await sweep_at(rt, clock, START + timedelta(days=3)) == 0  # nothing after that
    assert sent(rt) == [(TimerKind.RENOTIFY, queue.owner),
                        (TimerKind.BACKUP, queue.backup_owner),
                        (TimerKind.SUPERVISOR, queue.supervisor)]

    stored = await rt.store.get_ticket(ticket.id)
    assert (stored.status, stored.escalation_stage) == (TicketStatus.OPEN, 3)
    assert [(e.action, e.actor, e.at, e.detail) for e in stored.history] == [
        ("escalation.renotify", "system", START + sla, queue.owner),
        ("escalation.backup", "system", START + 2 * sla, queue.backup_owner),
        ("escalation.supervisor", "system", START + 3 * sla, queue.supervisor)]
    audited = [(e.event.action, e.event.actor, e.event.ref) for e in await rt.audit.entries()
               if e.event.action.startswith("escalation.")]
    assert audited == [(f"escalation.{kind}", "system", f"{ticket.id}:{kind}")
                       for kind in ("renotify", "backup", "supervisor")]


async def test_a_claim_stops_the_escalation(rt: Runtime, clock: Clock) -> None:
    ticket = await hand_off(rt)
    assert await sweep_at(rt, clock, START + timedelta(minutes=30)) == 1  # renotify
    clock.now = START + timedelta(minutes=40)
    assert (await rt.desk.claim(ticket.id, "U1")).ok
    for minutes in (60, 90, 600):
        assert await sweep_at(rt, clock, START + timedelta(minutes=minutes)) == 0
    assert [kind for kind, _ in sent(rt)] == [TimerKind.RENOTIFY]
    assert (await rt.store.get_ticket(ticket.id)).escalation_stage == 1


async def test_the_owner_is_warned_before_the_promised_callback_is_missed(
        rt: Runtime, clock: Clock, config: Config) -> None:
    ticket = await ticket_with(rt, clock, callback_in=timedelta(hours=4))
    clock.now = START + timedelta(minutes=10)
    await rt.desk.claim(ticket.id, "U1")
    alert_at = START + timedelta(hours=4) * config.escalation.callback_alert_share
    assert await sweep_at(rt, clock, alert_at - timedelta(seconds=1)) == 0
    assert await sweep_at(rt, clock, alert_at) == 1
    assert sent(rt) == [(TimerKind.CALLBACK_DUE_SOON, "U1")]  # the agent who owns it
    assert await sweep_at(rt, clock, START + timedelta(hours=5)) == 0
    stored = await rt.store.get_ticket(ticket.id)
    assert stored.callback_alerted
    assert [(e.action, e.detail) for e in stored.history][-1] == ("escalation.callback_due_soon",
                                                                  "U1")


async def test_an_unclaimed_callback_alert_goes_to_the_lane_owner_and_a_resolved_ticket_has_none(
        rt: Runtime, clock: Clock, config: Config) -> None:
    waiting = await ticket_with(rt, clock, callback_in=timedelta(hours=4), patient="P1001")
    done = await ticket_with(rt, clock, callback_in=timedelta(hours=4), patient="P1002")
    await rt.desk.resolve(done.id, "U1", "resolved")
    owner = config.queues["front_desk"].owner
    clock.now = START + timedelta(hours=3, minutes=30)
    await rt.escalations.sweep()
    alerts = [n for n in rt.escalations.notifier.sent if n.kind is TimerKind.CALLBACK_DUE_SOON]
    assert alerts == [Notification(TimerKind.CALLBACK_DUE_SOON, waiting.id, "front_desk", owner)]


def test_a_lead_time_can_bring_the_callback_alert_forward(config: Config) -> None:
    lead = config.model_copy(update={"escalation": config.escalation.model_copy(
        update={"callback_alert_lead_minutes": 60})})
    note = HandoffNote(contact_reason="x", checks_done="", action_taken="", queue="front_desk",
                       callback_window="2 hours", unresolved="",
                       callback_due=(START + timedelta(hours=2)).isoformat())
    ticket = HandoffTicket(conversation_id="portal:x", channel="portal", lane="front_desk",
                           reason="r", note=note)
    [_, default] = EscalationPolicy(config).first_timers(ticket, START)
    [_, earlier] = EscalationPolicy(lead).first_timers(ticket, START)
    assert default.due == START + timedelta(minutes=96)  # 80% of the time to the callback
    assert earlier.due == START + timedelta(hours=1)  # an hour ahead is earlier


async def test_emergency_tickets_escalate_on_the_short_sla(rt: Runtime, clock: Clock,
                                                           config: Config) -> None:
    await ticket_with(rt, clock, lane="clinical", priority=Priority.EMERGENCY)
    short = timedelta(minutes=min(config.queues["clinical"].ack_sla_minutes,
                                  config.escalation.emergency_ack_minutes))
    assert short == timedelta(minutes=5)
    assert await sweep_at(rt, clock, START + short - timedelta(seconds=1)) == 0
    assert await sweep_at(rt, clock, START + short) == 1
    assert sent(rt) == [(TimerKind.RENOTIFY, config.queues["clinical"].owner)]


async def test_closed_lanes_escalate_when_they_open_and_on_call_lanes_at_once(
        rt: Runtime, clock: Clock, config: Config) -> None:
    evening = datetime(2025, 3, 11, 18, 0, tzinfo=NEW_YORK).astimezone(UTC)
    clock.now = evening
    front = await ticket_with(rt, clock, patient="P1001")
    clinical = await ticket_with(rt, clock, lane="clinical", patient="P1002")
    assert await sweep_at(rt, clock, evening + timedelta(minutes=15)) == 1  # on-call lane
    assert (await rt.desk.claim(clinical.id, "U-oncall")).ok
    morning = datetime(2025, 3, 12, 8, 0, tzinfo=NEW_YORK).astimezone(UTC)
    assert await sweep_at(rt, clock, morning - timedelta(seconds=1)) == 0
    assert await sweep_at(rt, clock, morning) == 1  # the front desk opens
    assert [n.ticket_id for n in rt.escalations.notifier.sent] == [clinical.id, front.id]


async def test_a_moved_ticket_escalates_on_the_new_lane_and_old_timers_are_void(
        rt: Runtime, clock: Clock, config: Config) -> None:
    ticket = await hand_off(rt)
    assert await sweep_at(rt, clock, START + timedelta(minutes=30)) == 1
    moved_at = START + timedelta(minutes=35)
    clock.now = moved_at
    await rt.desk.move(ticket.id, "U1", "billing")
    assert await sweep_at(rt, clock, START + timedelta(minutes=60)) == 0  # old backup step
    sla = timedelta(minutes=config.queues["billing"].ack_sla_minutes)
    assert await sweep_at(rt, clock, moved_at + sla) == 1
    assert sent(rt)[-1] == (TimerKind.RENOTIFY, config.queues["billing"].owner)
    assert (await rt.store.get_ticket(ticket.id)).escalation_stage == 1


async def test_a_failed_notification_is_fired_again_after_its_lease(
        rt: Runtime, clock: Clock, config: Config) -> None:
    class FlakyNotifier(RecordingNotifier):
        failures = 1

        async def renotify(self, ticket: HandoffTicket, *, owner: str) -> None:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("slack unreachable")
            await super().renotify(ticket, owner=owner)

    rt.escalations.notifier = FlakyNotifier()
    ticket = await hand_off(rt)
    due = START + timedelta(minutes=30)
    assert await sweep_at(rt, clock, due) == 0  # failed: nothing recorded
    assert (await rt.store.get_ticket(ticket.id)).history == []
    assert await sweep_at(rt, clock, due + timedelta(seconds=1)) == 0  # still leased
    lease = timedelta(seconds=config.escalation.timer_lease_seconds)
    assert await sweep_at(rt, clock, due + lease) == 1
    assert sent(rt) == [(TimerKind.RENOTIFY, config.queues["front_desk"].owner)]
    assert [e.action for e in (await rt.store.get_ticket(ticket.id)).history] == \
        ["escalation.renotify"]


async def test_two_sweepers_racing_fire_each_timer_once(rt: Runtime, clock: Clock,
                                                        backend: str) -> None:
    tickets = [await hand_off(rt, patient=f"P{2000 + n}") for n in range(12)]
    client = redis.Redis.from_url(redis_url()) if backend == "redis" else None
    try:
        other_store, other_audit = rt.store, rt.audit
        if client is not None:  # another process: its own client, store and audit writer
            keys, prefix = rt.settings.keys, rt.settings.redis_prefix
            other_store = RedisStore(client, keys.sealer, keys.hasher, prefix=prefix)
            other_audit = RedisAuditLog(client, AuditChain(keys.hasher.derive_key(
                "audit-mac-v1")), prefix=prefix)
        sweepers = [rt.escalations,
                    EscalationSweeper(rt.config, other_store, other_audit, clock=clock)]
        for minutes in (30, 60, 90):
            clock.now = START + timedelta(minutes=minutes)
            fired = await asyncio.gather(*(s.sweep(limit=5) for s in sweepers * 3))
            assert sum(fired) == len(tickets)
    finally:
        if client is not None:
            await client.aclose()
    notices = [(n.ticket_id, n.kind) for s in sweepers for n in s.notifier.sent]
    assert sorted(notices) == sorted((t.id, kind) for t in tickets
                                     for kind in (TimerKind.RENOTIFY, TimerKind.BACKUP,
                                                  TimerKind.SUPERVISOR))
    for ticket in tickets:
        stored = await rt.store.get_ticket(ticket.id)
        assert [e.action for e in stored.history] == [
            "escalation.renotify", "escalation.backup", "escalation.supervisor"]
    assert (await rt.audit.verify()).ok


@pytest.mark.parametrize("backend", ["redis"])
async def test_timers_survive_a_restart(config: Config, settings: Settings, backend: str) -> None:
    clock = Clock(START)
    first = Runtime.build(config, settings, decision_step=FrontDeskHandoff, clock=clock)
    try:
        ticket = await hand_off(first)
    finally:
        await first.close()  # the process goes away; Redis keeps the timers
    clock.now = START + timedelta(minutes=30)
    second = Runtime.build(config, settings, decision_step=FrontDeskHandoff, clock=clock)
    try:
        assert await second.escalations.sweep() == 1
        assert sent(second) == [(TimerKind.RENOTIFY, config.queues["front_desk"].owner)]
        assert (await second.store.get_ticket(ticket.id)).escalation_stage == 1
    finally:
        await second.close()


async def test_the_workers_run_the_escalation_sweep(rt: Runtime, clock: Clock) -> None:
    ticket = await hand_off(rt)
    clock.now = START + timedelta(minutes=30)

    async def renotified() -> bool:
        return any(n.ticket_id == ticket.id for n in rt.escalations.notifier.sent)

    await run_workers_until(rt, renotified, timeout=10)
    assert (await rt.store.get_ticket(ticket.id)).escalation_stage == 1
