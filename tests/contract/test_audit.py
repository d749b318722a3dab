"""The audit log contract over memory and Redis: chained, verifiable, tamper-evident."""

from __future__ import annotations

import asyncio
import os

import pytest

from bot.store.audit import AuditChain, AuditEvent, MemoryAuditLog, RedisAuditLog


@pytest.fixture
def chain() -> AuditChain:
    return AuditChain(os.urandom(32))


@pytest.fixture
def make_log(backend, chain, redis_client, prefix):
    def make():
        if backend == "memory":
            return MemoryAuditLog(chain)
        return RedisAuditLog(redis_client, chain, prefix=prefix)
    return make


def event(n: int) -> AuditEvent:
    return AuditEvent(action="conversation.turn", actor="bot", conversation=f"sms:{n:04x}",
                      ref=f"entry-{n}")


async def test_entries_are_chained_in_order_and_verify(make_log) -> None:
    log = make_log()
    assert (await log.verify()).ok
    for n in range(3):
        await log.record(event(n))
    entries = await log.entries()
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.event.ref for e in entries] == ["entry-0", "entry-1", "entry-2"]
    assert entries[1].prev == entries[0].mac and entries[2].prev == entries[1].mac
    check = await log.verify()
    assert check.ok and check.entries == 3 and check.head_seq == 3
    assert check.head_mac == entries[-1].mac


async def test_concurrent_records_are_group_committed_without_gaps(make_log) -> None:
    log = make_log()
    await asyncio.gather(*(log.record(event(n)) for n in range(200)))
    check = await log.verify()
    assert check.ok and check.entries == 200


async def test_two_writers_share_one_redis_chain(chain, redis_client, prefix) -> None:
    # As two processes would: each with its own idea of the head.
    first, second = (RedisAuditLog(redis_client, chain, prefix=prefix) for _ in range(2))
    await asyncio.gather(*(log.record(event(n)) for n in range(50)
                           for log in (first, second)))
    check = await first.verify()
    assert check.ok and check.entries == 100


@pytest.fixture
async def three_entries(chain, redis_client, prefix) -> RedisAuditLog:
    log = RedisAuditLog(redis_client, chain, prefix=prefix)
    for n in range(3):
        await log.record(event(n))
    return log


async def delete_entry(redis_client, prefix: str, index: int) -> None:
    ids = [entry_id for entry_id, _ in await redis_client.xrange(f"{prefix}:audit")]
    await redis_client.xdel(f"{prefix}:audit", ids[index])


async def test_a_forged_entry_is_detected(three_entries, redis_client, prefix) -> None:
    # Someone with write access to Redis adds to history without the key.
    forger = RedisAuditLog(redis_client, AuditChain(os.urandom(32)), prefix=prefix)
    await forger.record(event(99))
    check = await three_entries.verify()
    assert not check.ok and check.problem == "entry 4 was altered"


async def test_a_deleted_entry_is_detected(three_entries, redis_client, prefix) -> None:
    await delete_entry(redis_client, prefix, 1)
    check = await three_entries.verify()
    assert not check.ok and check.problem == "entry 2 is missing (found 3 next)"


async def test_a_truncated_log_no_longer_matches_its_head(three_entries, redis_client,
                                                         prefix) -> None:
    await delete_entry(redis_client, prefix, -1)
    check = await three_entries.verify()
    assert not check.ok and "ends at 2" in check.problem
