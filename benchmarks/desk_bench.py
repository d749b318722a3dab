"""Benchmark the agent desk and escalation timers on Redis.

    make bench-desk          # starts a private Redis when REDIS_URL is unset
    python benchmarks/desk_bench.py --tickets 300 --agents 8 --json

Three parts, each against the real store (Redis), the real desk and the real sweeper:

1. Claim race: `--tickets` handoffs (made by the real pipeline, the fixed front-desk step),
   then `--agents` agents, each with its own Redis connection as separate desk processes
   would have, all try to claim every ticket at once, in their own random order. Measures
   claim() calls per second and checks that every ticket has exactly one owner and one
   "claimed" entry in its history (PASS/FAIL; a FAIL makes the run exit 1).
2. Replies: each owner sends one reply per ticket it won (atomic commit of transcript,
   session, outbox and ticket history under the conversation lock, then delivery to the
   portal mailbox): replies per second, p50/p99 latency.
3. Escalation: the same number of fresh unclaimed handoffs, the driven clock moved two hours
   on (past the acknowledge SLA three times), and sweeps until nothing is due: timer steps
   fired per second, with a check that each ticket went re-notify, backup, supervisor, once
   each, in order.

Compare within one run; absolute numbers on a shared 2-core host are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as redis
from hostinfo import host_footer, host_info
from pipeline_bench import delete_keys, percentile

from bot.app.runtime import Runtime
from bot.config.loader import load_config
from bot.config.settings import Settings
from bot.core.crypto import load_key_material, new_key
from bot.core.envelopes import Inbound
from bot.core.tickets import HandoffTicket, TicketStatus
from bot.engine.decision import FrontDeskHandoff
from bot.ops.logs import configure_logging
from bot.store.audit import AuditChain, RedisAuditLog
from bot.store.redis import RedisStore
from handoff.desk import AgentDesk

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
START = datetime.fromisoformat("2026-12-07T10:00:00-05:00")  # a Monday in clinic hours


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Report:
    tickets: int
    agents: int
    claim_calls: int
    claim_seconds: float
    claims_won: int
    owners_ok: bool
    replies: int
    reply_seconds: float
    reply_p50_ms: float
    reply_p99_ms: float
    escalations: int
    escalation_seconds: float
    escalations_ok: bool

    def checks(self) -> dict[str, bool]:
        return {"one owner per ticket": self.owners_ok,
                "each ticket escalated once per step": self.escalations_ok}


async def make_tickets(runtime: Runtime, clock: Clock, count: int, tag: str) -> list[HandoffTicket]:
    """`count` handoffs through the real pipeline (one portal message each)."""
    tickets = []
    for n in range(count):
        sender = f"BENCH{tag}{n:05d}"
        await runtime.ingress.submit(Inbound(channel="portal", sender=sender,
                                             provider_message_id=uuid.uuid4().hex,
                                             text="I need to talk to someone about my bill",
                                             received_at=clock()))
        [entry] = await runtime.ingress.queue.read("bench", count=1, block=1)
        await runtime.pipeline.handle(entry)
        await runtime.ingress.queue.ack(entry.entry_id)
        session = await runtime.store.get_session(
            runtime.ingress.conversation_key("portal", sender))
        tickets.append(await runtime.store.get_ticket(session.open_ticket_id))
    return tickets


async def claim_race(runtime: Runtime, clock: Clock, tickets: list[HandoffTicket],
                     agents: int, redis_url: str, prefix: str,
                     rng: random.Random) -> tuple[int, float, dict[str, str]]:
    keys = runtime.settings.keys
    clients = [redis.Redis.from_url(redis_url) for _ in range(agents)]
    chain = AuditChain(keys.hasher.derive_key("audit-mac-v1"))
    desks = [AgentDesk(runtime.config,
                       RedisStore(client, keys.sealer, keys.hasher, prefix=prefix),
                       RedisAuditLog(client, chain, prefix=prefix), clock=clock)
             for client in clients]
    won: dict[str, str] = {}
    calls = 0

    async def agent(index: int) -> None:
        nonlocal calls
        name = f"agent{index}"
        order = [ticket.id for ticket in tickets]
        rng.shuffle(order)
        for ticket_id in order:
            result = await desks[index].claim(ticket_id, name)
            calls += 1
            if result.code == "claimed":
                if ticket_id in won:
                    raise AssertionError("a ticket was claimed twice")
                won[ticket_id] = name

    started = time.perf_counter()
    try:
        await asyncio.gather(*(agent(i) for i in range(agents)))
    finally:
        elapsed = time.perf_counter() - started
        for client in clients:
            await client.aclose()
    return calls, elapsed, won


async def owners_consistent(runtime: Runtime, won: dict[str, str],
                            tickets: list[HandoffTicket]) -> bool:
    for ticket in tickets:
        stored = await runtime.store.get_ticket(ticket.id)
        claims = [event for event in stored.history if event.action == "claimed"]
        if (stored.status is not TicketStatus.CLAIMED or len(claims) != 1
                or stored.claimed_by != won.get(ticket.id)):
            return False
    return len(won) == len(tickets)


async def replies(runtime: Runtime, won: dict[str, str]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    started = time.perf_counter()
    for ticket_id, agent in won.items():
        began = time.perf_counter()
        await runtime.desk.reply(ticket_id, agent, "Thanks for waiting, I'm looking at it now.")
        latencies.append((time.perf_counter() - began) * 1000)
    return time.perf_counter() - started, latencies


async def escalation(runtime: Runtime, clock: Clock, count: int) -> tuple[int, float, bool]:
    tickets = await make_tickets(runtime, clock, count, "E")
    # Two hours on: past the front desk's 30-minute SLA three times over, still in hours, so
    # every ticket escalates all the way: re-notify, backup owner, supervisor.
    clock.now += timedelta(hours=2)
    fired = 0
    started = time.perf_counter()
    while True:
        step = await runtime.escalations.sweep(limit=200)
        fired += step
        if step == 0:
            break
    elapsed = time.perf_counter() - started
    ok = True
    for ticket in tickets:
        stored = await runtime.store.get_ticket(ticket.id)
        steps = [e for e in stored.history if e.action.startswith("escalation.")]
        ok = ok and stored.escalation_stage == 3 and [e.action for e in steps] == [
            "escalation.renotify", "escalation.backup", "escalation.supervisor"]
    return fired, elapsed, ok


async def run(args: argparse.Namespace, redis_url: str, prefix: str) -> Report:
    config = load_config(args.config)
    env = {"PATIENTBOT_DATA_KEYS": f"bench:{new_key()}", "PATIENTBOT_LOOKUP_KEY": new_key(),
           "PATIENTBOT_SESSION_SECRET": new_key()}
    settings = Settings(redis_url=redis_url, redis_prefix=prefix,
                        keys=load_key_material(env, Path(config.app.data_dir)))
    clock = Clock(START)
    runtime = Runtime.build(config, settings, decision_step=FrontDeskHandoff, clock=clock)
    rng = random.Random(args.seed)
    try:
        tickets = await make_tickets(runtime, clock, args.tickets, "C")
        calls, claim_seconds, won = await claim_race(runtime, clock, tickets, args.agents,
                                                     redis_url, prefix, rng)
        owners_ok = await owners_consistent(runtime, won, tickets)
        reply_seconds, latencies = await replies(runtime, won)
        fired, escalation_seconds, escalations_ok = await escalation(runtime, clock,
                                                                     args.tickets)
    finally:
        await runtime.close()
    return Report(tickets=args.tickets, agents=args.agents, claim_calls=calls,
                  claim_seconds=claim_seconds, claims_won=len(won), owners_ok=owners_ok,
                  replies=len(latencies), reply_seconds=reply_seconds,
                  reply_p50_ms=percentile(sorted(latencies), 0.5),
                  reply_p99_ms=percentile(sorted(latencies), 0.99),
                  escalations=fired, escalation_seconds=escalation_seconds,
                  escalations_ok=escalations_ok)


def print_table(report: Report, host: dict[str, Any]) -> None:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print(f"claim race: {report.agents} agents x {report.tickets} tickets = "
          f"{report.claim_calls} claim() calls in {report.claim_seconds:.2f} s "
          f"({report.claim_calls / report.claim_seconds:,.0f}/s); {report.claims_won} won, "
          f"one owner per ticket: {verdict(report.owners_ok)}")
    print(f"replies:    {report.replies} owner replies in {report.reply_seconds:.2f} s "
          f"({report.replies / report.reply_seconds:,.0f}/s), p50 {report.reply_p50_ms:.1f} ms, "
          f"p99 {report.reply_p99_ms:.1f} ms (commit + delivery to the portal)")
    print(f"escalation: {report.escalations} steps (re-notify, backup, supervisor) fired in "
          f"{report.escalation_seconds:.2f} s "
          f"({report.escalations / max(report.escalation_seconds, 1e-9):,.0f}/s), "
          f"each ticket escalated once per step: {verdict(report.escalations_ok)}")
    print(host_footer(host))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Agent desk and escalation benchmark (Redis).")
    parser.add_argument("--tickets", type=int, default=300, help="handoffs per part (300)")
    parser.add_argument("--agents", type=int, default=8, help="agents racing to claim (8)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--config", type=Path, default=CONFIG_DIR)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.tickets < 1 or args.agents < 1:
        parser.error("--tickets and --agents must be positive")
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        print("desk_bench: REDIS_URL is not set (use `make bench-desk`, which starts a private "
              "Redis)", file=sys.stderr)
        return 2
    configure_logging(production=False, level=logging.ERROR)
    host = host_info()
    prefix = f"dbench-{uuid.uuid4().hex[:8]}"
    try:
        report = asyncio.run(run(args, redis_url, prefix))
    finally:
        asyncio.run(delete_keys(redis_url, prefix + "*"))
    if args.json:
        print(json.dumps({"host": host, **asdict(report), "checks": report.checks()}, indent=2))
    else:
        print_table(report, host)
    return 0 if all(report.checks().values()) else 1


if __name__ == "__main__":
    sys.exit(main())
