"""The ingress queue contract, over the in-process queue and a real Redis Stream."""

from __future__ import annotations

import asyncio

from bot.core.envelopes import Inbound
from bot.store.ingress import Ingress


async def test_sequence_numbers_are_per_conversation(ingress_queue) -> None:
    seqs = [(await ingress_queue.append(conv, "env")).seq for conv in ["a", "b", "a", "a", "b"]]
    assert seqs == [1, 1, 2, 3, 2]


async def test_read_then_ack(ingress_queue) -> None:
    first = await ingress_queue.append("a", "one")
    await ingress_queue.append("b", "two")
    got = await ingress_queue.read("w1", count=1, block=0.1)
    assert [(e.entry_id, e.conversation_id, e.seq, e.envelope) for e in got] == \
        [(first.entry_id, "a", 1, "one")]
    rest = await ingress_queue.read("w2", count=10, block=0.1)
    assert [e.envelope for e in rest] == ["two"]
    assert await ingress_queue.read("w1", count=10, block=0.05) == []
    assert await ingress_queue.pending() == 2
    await ingress_queue.ack(first.entry_id)
    assert await ingress_queue.pending() == 1


async def test_read_blocks_until_an_entry_arrives(ingress_queue) -> None:
    async def later() -> None:
        await asyncio.sleep(0.1)
        await ingress_queue.append("a", "late")

    task = asyncio.create_task(later())
    got = await ingress_queue.read("w1", count=5, block=3)
    await task
    assert [e.envelope for e in got] == ["late"]


async def test_reclaim_takes_over_idle_pending_entries(ingress_queue) -> None:
    entry = await ingress_queue.append("a", "one")
    await ingress_queue.read("dead-worker", count=1, block=0.1)
    assert await ingress_queue.reclaim("w2", min_idle=5, count=10) == []  # not idle long enough
    await asyncio.sleep(0.25)
    taken = await ingress_queue.reclaim("w2", min_idle=0.2, count=10)
    assert [e.entry_id for e in taken] == [entry.entry_id]
    assert taken[0].envelope == "one" and taken[0].seq == 1
    await ingress_queue.ack(entry.entry_id)
    await asyncio.sleep(0.25)
    assert await ingress_queue.reclaim("w3", min_idle=0.2, count=10) == []
    assert await ingress_queue.pending() == 0


async def test_dead_letters_are_set_aside_and_can_be_requeued(ingress_queue) -> None:
    entry = await ingress_queue.append("a", "unopenable")
    await ingress_queue.read("w1", count=1, block=0.1)
    await ingress_queue.dead_letter(entry.entry_id)
    assert await ingress_queue.pending() == 0
    assert await ingress_queue.dead_letters() == 1
    assert await ingress_queue.read("w1", count=1, block=0.05) == []
    assert await ingress_queue.requeue_dead_letters() == 1
    assert await ingress_queue.dead_letters() == 0
    [back] = await ingress_queue.read("w1", count=1, block=0.1)
    assert (back.conversation_id, back.seq, back.envelope) == ("a", 1, "unopenable")


async def test_envelopes_are_sealed_and_bound_to_their_conversation(ingress_queue, keys) -> None:
    ingress = Ingress(ingress_queue, keys.sealer, keys.hasher)
    inbound = Inbound(channel="sms", sender="+16175550100", provider_message_id="SM1",
                      text="my canary text")
    entry = await ingress.submit(inbound)
    assert "canary" not in entry.envelope and "+1617" not in entry.envelope
    assert "+1617" not in entry.conversation_id
    assert ingress.open(entry) == inbound
    other = ingress.conversation_key("sms", "+16175550199").id
    assert other != entry.conversation_id
    assert ingress.conversation_key("sms", "+16175550100").id == entry.conversation_id


async def test_reclaimed_entries_count_their_deliveries(ingress_queue) -> None:
    await ingress_queue.append("a", "one")
    [first] = await ingress_queue.read("w1", count=1, block=0.1)
    assert first.deliveries == 1
    counts = []
    for consumer in ("w2", "w3"):
        await asyncio.sleep(0.15)
        [again] = await ingress_queue.reclaim(consumer, min_idle=0.1, count=10)
        counts.append(again.deliveries)
    assert counts == [2, 3]
