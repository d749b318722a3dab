"""The Store contract, run over MemoryStore and RedisStore (real Redis)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bot.core.envelopes import ConversationKey, Outbound, utcnow
from bot.core.errors import LockTimeout
from bot.core.session import Direction, IdentityStatus, Session, SessionState, TranscriptEntry
from bot.core.tickets import (
    HandoffNote,
    HandoffTicket,
    Priority,
    TicketEvent,
    TicketStatus,
    TicketTimer,
    TimerKind,
)
from bot.store import Turn
from bot.store.base import ReviewItem


def make_session(n: int = 1) -> Session:
    return Session(key=ConversationKey("sms", f"hash{n:04d}"), sender=f"+1617555{n:04d}")


def note(summary: str = "wants to move a visit") -> HandoffNote:
    return HandoffNote(contact_reason="unclassified", checks_done="none", action_taken="handed",
                       queue="front_desk", callback_window="", unresolved="", summary=summary,
                       collected={"medication": "x"}, safety_cues=("chest_pain",))


def reply(session: Session, text: str = "hello") -> Outbound:
    return Outbound(conversation_id=session.conversation_id, channel="sms",
                    recipient=session.sender, text=text)


async def test_session_round_trip(store) -> None:
    assert await store.get_session(make_session().key) is None
    session = make_session()
    session.state = SessionState.AWAITING_IDENTITY
    session.identity = IdentityStatus.VERIFIED
    session.identity_verified_at = utcnow()
    session.patient_id = "P1001"
    session.slots = {"visit_type": "physical"}
    session.last_seq = 7
    await store.save_session(session)
    loaded = await store.get_session(session.key)
    assert loaded == session


async def test_dedupe_remembers_processed_ids_until_ttl(make_store) -> None:
    store = make_store(dedupe_ttl=0.3)
    session = make_session()
    assert not await store.is_processed("sms", "SM1")
    await store.commit(Turn(session=session, processed=("sms", "SM1")))
    assert await store.is_processed("sms", "SM1")
    assert not await store.is_processed("sms", "SM2")
    assert not await store.is_processed("email", "SM1")  # ids are per channel
    await asyncio.sleep(0.45)
    assert not await store.is_processed("sms", "SM1")


async def test_lock_is_exclusive_and_released(store) -> None:
    async with store.lock("sms:abc", ttl=5, timeout=1):
        with pytest.raises(LockTimeout):
            async with store.lock("sms:abc", ttl=5, timeout=0.1):
                pass
        async with store.lock("sms:other", ttl=5, timeout=0.1):
            pass  # other conversations are not blocked
    async with store.lock("sms:abc", ttl=5, timeout=0.1):
        pass


async def test_lock_of_a_dead_holder_expires(store) -> None:
    holder = store.lock("sms:abc", ttl=0.2, timeout=1)
    await holder.__aenter__()  # never released, like a crashed worker
    async with store.lock("sms:abc", ttl=5, timeout=2):
        pass


async def test_lock_serialises_concurrent_critical_sections(store) -> None:
    inside = 0
    peak = 0

    async def critical() -> None:
        nonlocal inside, peak
        async with store.lock("sms:abc", ttl=5, timeout=5):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(critical() for _ in range(10)))
    assert peak == 1


async def test_commit_writes_everything(store) -> None:
    session = make_session()
    session.state = SessionState.HANDED_OFF
    entries = [TranscriptEntry(Direction.IN, "patient", "first", "m1"),
               TranscriptEntry(Direction.OUT, "bot", "second", "m2")]
    ticket = HandoffTicket(conversation_id=session.conversation_id, channel="sms",
                           lane="front_desk", reason="r", note=note(), priority=Priority.URGENT)
    message = reply(session)
    await store.commit(Turn(session=session, processed=("sms", "SM9"), transcript=entries,
                            outbox=[message], tickets=[ticket]))
    assert (await store.get_session(session.key)).state is SessionState.HANDED_OFF
    assert await store.transcript(session.conversation_id) == entries
    assert await store.is_processed("sms", "SM9")
    assert await store.outbox_status(message.id) == "pending"
    assert await store.get_ticket(ticket.id) == ticket
    assert await store.tickets_in_lane("front_desk") == [ticket]
    assert await store.tickets_in_lane("billing") == []


async def test_a_lane_serves_emergency_then_urgent_then_oldest(store) -> None:
    session = make_session()
    start = utcnow()

    def ticket(minutes: int, priority: Priority) -> HandoffTicket:
        return HandoffTicket(conversation_id=session.conversation_id, channel="sms",
                             lane="clinical", reason="r", note=note(), priority=priority,
                             created_at=start + timedelta(minutes=minutes))

    old, newer = ticket(0, Priority.NORMAL), ticket(1, Priority.NORMAL)
    urgent, emergency = ticket(2, Priority.URGENT), ticket(3, Priority.EMERGENCY)
    for item in (old, newer, urgent, emergency):
        await store.commit(Turn(session=session, tickets=[item]))
    assert [t.id for t in await store.tickets_in_lane("clinical")] == \
        [emergency.id, urgent.id, old.id, newer.id]
    # the sealed note fields survive the round trip
    assert (await store.get_ticket(emergency.id)).note.collected == {"medication": "x"}


async def test_transcript_appends_in_order_and_reads_from_an_index(store) -> None:
    session = make_session()
    for i in range(5):
        entry = TranscriptEntry(Direction.IN, "patient", f"message {i}", f"m{i}")
        await store.commit(Turn(session=session, transcript=[entry]))
    texts = [e.text for e in await store.transcript(session.conversation_id)]
    assert texts == [f"message {i}" for i in range(5)]
    assert [e.text for e in await store.transcript(session.conversation_id, start=3)] == \
        ["message 3", "message 4"]
    assert await store.transcript("sms:nobody") == []


async def test_outbox_lease_claim_send_and_retry(store) -> None:
    session = make_session()
    first, second = reply(session, "one"), reply(session, "two")
    await store.commit(Turn(session=session, outbox=[first, second]), lease_seconds=0.2)
    # Leased to the committing worker: nobody else may claim them yet.
    assert await store.claim_outbox(limit=10, lease_seconds=5) == []
    await asyncio.sleep(0.3)
    claimed = await store.claim_outbox(limit=10, lease_seconds=5)
    assert sorted(m.text for m in claimed) == ["one", "two"]
    assert claimed[0] in (first, second)
    assert await store.claim_outbox(limit=10, lease_seconds=5) == []  # leased again
    await store.mark_sent(first.id, provider_id="SMabc")
    await store.retry_outbox(second.id, delay=0)
    again = await store.claim_outbox(limit=10, lease_seconds=5)
    assert [m.id for m in again] == [second.id]
    assert await store.outbox_status(first.id) == "sent"
    assert await store.outbox_status(second.id) == "pending"
    assert await store.outbox_status("unknown") is None


async def test_an_undeliverable_entry_is_closed_and_says_so(store) -> None:
    session = make_session()
    message = reply(session)
    await store.commit(Turn(session=session, outbox=[message]), lease_seconds=0)
    await store.mark_undeliverable(message.id)
    assert await store.claim_outbox(limit=10, lease_seconds=5) == []  # never sent again
    assert await store.outbox_status(message.id) == "undeliverable"
    await store.commit(Turn(session=session, outbox=[message]), lease_seconds=0)
    assert await store.outbox_status(message.id) == "undeliverable"  # not re-opened


async def test_outbox_entry_is_not_duplicated_by_a_second_commit(store) -> None:
    session = make_session()
    message = reply(session)
    await store.commit(Turn(session=session, outbox=[message]), lease_seconds=0)
    await store.mark_sent(message.id)
    await store.commit(Turn(session=session, outbox=[message]), lease_seconds=0)
    assert await store.outbox_status(message.id) == "sent"


async def test_mailbox_is_ordered_idempotent_and_wakes_readers(store) -> None:
    conv = "portal:abc"
    now = utcnow()
    assert await store.mailbox_append(conv, "o1", "first", now) == 1
    assert await store.mailbox_append(conv, "o1", "first", now) == 1
    assert await store.mailbox_append(conv, "o2", "second", now + timedelta(seconds=1)) == 2
    items = await store.mailbox_read(conv, after=0)
    assert [(i.cursor, i.message_id, i.text) for i in items] == [(1, "o1", "first"),
                                                                 (2, "o2", "second")]
    assert [i.text for i in await store.mailbox_read(conv, after=1)] == ["second"]

    async def later() -> None:
        await asyncio.sleep(0.1)
        await store.mailbox_append(conv, "o3", "third", utcnow())

    task = asyncio.create_task(later())
    waited = await store.mailbox_read(conv, after=2, wait=3)
    await task
    assert [i.text for i in waited] == ["third"]
    assert await store.mailbox_read(conv, after=3, wait=0.05) == []


async def test_kv_values_expire(store) -> None:
    await store.kv_set("portal", "sid1", {"patient_id": "P1"}, ttl=0.2)
    assert await store.kv_get("portal", "sid1") == {"patient_id": "P1"}
    await asyncio.sleep(0.3)
    assert await store.kv_get("portal", "sid1") is None
    await store.kv_set("portal", "sid2", {"a": 1}, ttl=10)
    await store.kv_delete("portal", "sid2")
    assert await store.kv_get("portal", "sid2") is None


async def test_counters_count_within_their_window(store) -> None:
    assert await store.count_get("signin", "x") == 0
    assert [await store.count_hit("signin", "x", window=0.2) for _ in range(3)] == [1, 2, 3]
    assert await store.count_get("signin", "x") == 3
    await asyncio.sleep(0.3)
    assert await store.count_get("signin", "x") == 0
    assert await store.count_hit("signin", "x", window=0.2) == 1


async def test_ping(store) -> None:
    assert await store.ping() is True


async def test_open_turn_locks_and_reads_session_and_dedupe_mark(store) -> None:
    session = make_session()
    key = session.key
    async with store.open_turn(key, channel="sms", provider_message_id="SM1") as start:
        assert start.session is None and start.already_processed is False
        with pytest.raises(LockTimeout):
            async with store.lock(key.id, timeout=0.1):
                pass
        await store.commit(Turn(session=session, processed=("sms", "SM1")),
                           release=start.lease)
        assert start.lease.released
        # Released by the commit: the next turn need not wait for this block to end.
        async with store.lock(key.id, timeout=0.5):
            pass
    async with store.open_turn(key, channel="sms", provider_message_id="SM1") as start:
        assert start.session == session and start.already_processed is True
    async with store.open_turn(key, channel="sms", provider_message_id="SM2", timeout=0.5) as s:
        assert s.already_processed is False  # the lock was released on leaving the block


async def test_a_commit_does_not_release_a_lock_it_no_longer_holds(store) -> None:
    session = make_session()
    async with store.open_turn(session.key, channel="sms", provider_message_id="SM1",
                               ttl=0.1) as start:
        await asyncio.sleep(0.2)  # our lock expired...
        async with store.lock(session.key.id, ttl=5, timeout=0.5):  # ...and another took it
            await store.commit(Turn(session=session), release=start.lease)
            with pytest.raises(LockTimeout):  # the other holder still has it
                async with store.lock(session.key.id, timeout=0.1):
                    pass


async def test_kv_existing_names_the_items_that_exist(store) -> None:
    assert await store.kv_existing("slot", []) == set()
    await store.kv_set("slot", "a", {"booking": "B1"}, ttl=10)
    await store.kv_set("slot", "b", {"booking": "B2"}, ttl=0.2)
    assert await store.kv_existing("slot", ["a", "b", "c"]) == {"a", "b"}
    assert await store.kv_existing("other", ["a"]) == set()
    await asyncio.sleep(0.35)
    assert await store.kv_existing("slot", ["a", "b", "c"]) == {"a"}


async def test_kv_create_all_creates_every_item(store) -> None:
    assert await store.kv_create_all("slot", ["a", "b", "c"], {"booking": "B1"}, ttl=10)
    for item_id in ("a", "b", "c"):
        assert await store.kv_get("slot", item_id) == {"booking": "B1"}


async def test_kv_create_all_refuses_when_one_exists_and_creates_none(store) -> None:
    await store.kv_set("slot", "b", {"booking": "old"}, ttl=10)
    assert not await store.kv_create_all("slot", ["a", "b", "c"], {"booking": "new"}, ttl=10)
    assert await store.kv_get("slot", "a") is None
    assert await store.kv_get("slot", "b") == {"booking": "old"}
    assert await store.kv_get("slot", "c") is None
    assert await store.kv_create_all("other", ["b"], {"booking": "new"}, ttl=10)  # namespaced


async def test_kv_create_all_items_expire(store) -> None:
    assert await store.kv_create_all("slot", ["a", "b"], {"booking": "B1"}, ttl=0.2)
    assert not await store.kv_create_all("slot", ["b"], {"booking": "B2"}, ttl=10)
    await asyncio.sleep(0.3)
    assert await store.kv_get("slot", "a") is None
    assert await store.kv_create_all("slot", ["a", "b"], {"booking": "B2"}, ttl=10)
    assert await store.kv_get("slot", "b") == {"booking": "B2"}


async def test_kv_create_all_racing_overlapping_sets_never_overlap(store) -> None:
    # 30 tasks each claim 3 consecutive cells out of 12; winners must be pairwise disjoint
    # and every cell held must belong to the winner that claimed it.
    claims = {n: [f"c{(n + i) % 12}" for i in range(3)] for n in range(30)}

    async def claim(n: int) -> bool:
        await asyncio.sleep(0)
        return await store.kv_create_all("slot", claims[n], {"owner": n}, ttl=10)

    results = await asyncio.gather(*(claim(n) for n in claims))
    winners = [n for n, won in zip(claims, results, strict=True) if won]
    assert winners
    taken = [cell for n in winners for cell in claims[n]]
    assert len(taken) == len(set(taken))
    for n in winners:
        for cell in claims[n]:
            assert await store.kv_get("slot", cell) == {"owner": n}
    for n in set(claims) - set(winners):  # every loser collided with some winner
        assert set(claims[n]) & set(taken)


# --- tickets changed by the agent desk, escalation timers, review queues -------------------

def make_ticket(session: Session, lane: str = "front_desk", **fields) -> HandoffTicket:
    return HandoffTicket(conversation_id=session.conversation_id, channel="sms", lane=lane,
                         reason="r", note=note(), **fields)


def timer(ticket_id: str, kind: TimerKind, due, round_: int = 0) -> TicketTimer:
    return TicketTimer(ticket_id, kind, due, round_)


async def test_desk_fields_of_a_ticket_survive_the_round_trip(store) -> None:
    session = make_session()
    now = utcnow()
    ticket = make_ticket(session, status=TicketStatus.CLAIMED, claimed_by="U123",
                         claimed_at=now, corrected_intent="billing_question",
                         escalation_stage=2, escalation_round=1, callback_alerted=True,
                         history=[TicketEvent("claimed", "agent:U123", now),
                                  TicketEvent("moved", "agent:U123", now, "a>b")])
    await store.commit(Turn(session=session, tickets=[ticket]))
    assert await store.get_ticket(ticket.id) == ticket


async def test_update_ticket_writes_only_over_the_revision_it_read(store) -> None:
    session = make_session()
    ticket = make_ticket(session)
    await store.commit(Turn(session=session, tickets=[ticket]))
    first, second = await store.get_ticket(ticket.id), await store.get_ticket(ticket.id)
    first.status, first.claimed_by = TicketStatus.CLAIMED, "U1"
    assert await store.update_ticket(first)
    assert first.revision == 1
    # The second copy is stale: nothing it carries is written, not even the extras.
    second.status, second.claimed_by = TicketStatus.CLAIMED, "U2"
    message = reply(session, "never")
    late = timer(ticket.id, TimerKind.RENOTIFY, utcnow())
    assert not await store.update_ticket(
        second, turn=Turn(session=session, outbox=[message]), timers=[late],
        review=ReviewItem("relabel", ticket.id, {"x": 1}, utcnow()))
    stored = await store.get_ticket(ticket.id)
    assert (stored.claimed_by, stored.revision) == ("U1", 1)
    assert await store.outbox_status(message.id) is None
    assert await store.get_timer(late.id) is None
    assert await store.review_items("relabel") == []
    unknown = make_ticket(session)
    assert not await store.update_ticket(unknown)  # never stored (or expired)
    with pytest.raises(ValueError):
        await store.update_ticket(stored, turn=Turn(session=session, tickets=[unknown]))


async def test_concurrent_updates_of_one_revision_have_exactly_one_winner(store) -> None:
    session = make_session()
    ticket = make_ticket(session)
    await store.commit(Turn(session=session, tickets=[ticket]))
    copies = await asyncio.gather(*(store.get_ticket(ticket.id) for _ in range(20)))
    for n, copy in enumerate(copies):
        copy.claimed_by = f"U{n}"
    results = await asyncio.gather(*(store.update_ticket(copy) for copy in copies))
    assert sum(results) == 1
    winner = copies[results.index(True)]
    assert (await store.get_ticket(ticket.id)).claimed_by == winner.claimed_by


async def test_update_ticket_moves_lanes_and_a_resolved_ticket_leaves_its_lane(store) -> None:
    session = make_session()
    start = utcnow()
    old = make_ticket(session, created_at=start)
    young = make_ticket(session, created_at=start + timedelta(minutes=5))
    await store.commit(Turn(session=session, tickets=[old, young]))
    moving = await store.get_ticket(young.id)
    moving.lane, moving.priority = "billing", Priority.URGENT
    assert await store.update_ticket(moving)
    assert [t.id for t in await store.tickets_in_lane("front_desk")] == [old.id]
    assert [t.id for t in await store.tickets_in_lane("billing")] == [young.id]
    back = await store.get_ticket(young.id)
    back.lane = "front_desk"  # urgent now: served before the older normal ticket
    assert await store.update_ticket(back)
    assert [t.id for t in await store.tickets_in_lane("front_desk")] == [young.id, old.id]
    assert await store.tickets_in_lane("billing") == []
    done = await store.get_ticket(old.id)
    done.status = TicketStatus.RESOLVED
    assert await store.update_ticket(done)
    assert [t.id for t in await store.tickets_in_lane("front_desk")] == [young.id]
    assert (await store.get_ticket(old.id)).status is TicketStatus.RESOLVED


async def test_update_ticket_commits_a_turn_and_releases_the_lock(store) -> None:
    session = make_session()
    ticket = make_ticket(session)
    await store.commit(Turn(session=session, tickets=[ticket]))
    async with store.lock(session.conversation_id, ttl=5, timeout=1) as lease:
        changed = await store.get_ticket(ticket.id)
        session.state = SessionState.CLOSED
        entry = TranscriptEntry(Direction.OUT, "agent:U1", "see you", "m1")
        message = reply(session, "see you")
        assert await store.update_ticket(
            changed, turn=Turn(session=session, transcript=[entry], outbox=[message]),
            release=lease, lease_seconds=0)
        assert lease.released
        async with store.lock(session.conversation_id, timeout=0.5):
            pass
    assert (await store.get_session(session.key)).state is SessionState.CLOSED
    assert await store.transcript(session.conversation_id) == [entry]
    assert [m.id for m in await store.claim_outbox(limit=5, lease_seconds=5)] == [message.id]


async def test_timers_are_leased_when_due_and_dropped_when_completed(store) -> None:
    session = make_session()
    ticket = make_ticket(session)
    now = utcnow()
    first = timer(ticket.id, TimerKind.RENOTIFY, now + timedelta(minutes=30))
    second = timer(ticket.id, TimerKind.CALLBACK_DUE_SOON, now + timedelta(minutes=40))
    await store.commit(Turn(session=session, tickets=[ticket], timers=[second, first]))
    assert await store.get_timer(first.id) == first
    assert await store.claim_timers(now=now, limit=10, lease_seconds=60) == []
    later = now + timedelta(minutes=45)
    assert await store.claim_timers(now=later, limit=10, lease_seconds=60) == [first, second]
    assert await store.claim_timers(now=later, limit=10, lease_seconds=60) == []  # leased
    await store.complete_timer(first.id)
    assert await store.get_timer(first.id) is None
    # A lease that ran out (the sweeper died) makes the timer due again.
    again = later + timedelta(seconds=61)
    assert await store.claim_timers(now=again, limit=10, lease_seconds=60) == [second]
    # Committing the same timer again does not reset it.
    await store.commit(Turn(session=session, timers=[second]))
    assert await store.claim_timers(now=again, limit=10, lease_seconds=60) == []


async def test_update_ticket_schedules_and_cancels_timers(store) -> None:
    session = make_session()
    ticket = make_ticket(session)
    now = utcnow()
    renotify = timer(ticket.id, TimerKind.RENOTIFY, now)
    await store.commit(Turn(session=session, tickets=[ticket], timers=[renotify]))
    changed = await store.get_ticket(ticket.id)
    backup = timer(ticket.id, TimerKind.BACKUP, now + timedelta(minutes=1))
    assert await store.update_ticket(changed, timers=[backup], cancel_timers=[renotify.id])
    assert await store.get_timer(renotify.id) is None
    assert await store.claim_timers(now=now + timedelta(minutes=2), limit=10,
                                    lease_seconds=5) == [backup]
    # Scheduling a timer again replaces it (a new due time).
    moved = timer(ticket.id, TimerKind.BACKUP, now + timedelta(hours=1))
    assert await store.update_ticket(changed, timers=[moved])
    assert await store.get_timer(backup.id) == moved
    assert await store.claim_timers(now=now + timedelta(minutes=59), limit=10,
                                    lease_seconds=5) == []


async def test_racing_timer_claims_never_hand_out_a_timer_twice(store) -> None:
    session = make_session()
    now = utcnow()
    timers = [timer(f"t{n:03d}", TimerKind.RENOTIFY, now - timedelta(seconds=n))
              for n in range(40)]
    await store.commit(Turn(session=session, timers=timers))

    async def claim() -> list[str]:
        await asyncio.sleep(0)
        return [t.id for t in await store.claim_timers(now=now, limit=7, lease_seconds=60)]

    claimed = [timer_id for batch in await asyncio.gather(*(claim() for _ in range(8)))
               for timer_id in batch]
    assert len(claimed) == len(set(claimed)) == 40


async def test_review_items_are_kept_in_order_replaced_by_id_and_removed(store) -> None:
    session = make_session()
    first, second = make_ticket(session), make_ticket(session)
    await store.commit(Turn(session=session, tickets=[first, second]))
    now = utcnow()
    items = [ReviewItem("relabel", first.id, {"text": "my words", "n": 1}, now),
             ReviewItem("relabel", second.id, {"text": "other words", "n": 2},
                        now + timedelta(seconds=1))]
    for item in items:
        assert await store.update_ticket(await store.get_ticket(item.item_id), review=item)
    assert await store.review_items("relabel") == items
    assert await store.review_items("other") == []
    newer = ReviewItem("relabel", first.id, {"text": "my words", "n": 3},
                       now + timedelta(seconds=2))
    assert await store.update_ticket(await store.get_ticket(first.id), review=newer)
    assert await store.review_items("relabel") == [items[1], newer]
    await store.review_remove("relabel", second.id)
    assert await store.review_items("relabel") == [newer]
