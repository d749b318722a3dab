"""Engine benchmark: conversation turns through the real pipeline with the conversation engine,
booking contention on Redis, and the readiness check's wall time.

What is measured
    turns       SMS messages go through `runtime.ingress.submit` and then
                `runtime.pipeline.handle` (dedupe, conversation lock, session, decision step,
                atomic commit; replies go to the outbox and are not delivered here - delivery
                is benchmarks/pipeline_bench.py's), one message at a time, with a controlled
                clock as in `patientbot simulate`. The timed part is `pipeline.handle` alone.
                Two workloads, on MemoryStore and on RedisStore:
                  flu-shot  --conversations independent SMS conversations, each from its own
                            sender, of the 5-turn flu-shot booking flow: "I'd like to book a
                            flu shot", the name, the date of birth, "next wednesday", "1",
                            cycling over the sample patients of config/patients.yml (identity
                            is checked by name and date of birth). Conversations arrive
                            staggered: every round one conversation starts and every open one
                            sends its next message, in a shuffled (seeded) order within the
                            round, so a patient can be offered a time that an earlier patient
                            books before the choice comes in. Outcomes are counted: booked;
                            taken (the engine says so and re-offers the next times); no open
                            slots (handed to scheduling); other. Bookings in the store must
                            equal booked conversations, with no slot booked twice.
                  held-out  single messages of the held-out NLU files (nlu/data/test, every
                            language and safety class, shuffled), each a fresh conversation.
                The same messages, with the same clock times, go through a second runtime
                whose decision step is the fixed FrontDeskHandoff (no NLU: hand off, then
                relay), in alternating blocks so that drift in the host's load hits both
                alike. Reported: turns/s (turns over the summed `handle` time: one turn at a
                time, no concurrency), p50/p99 per-turn latency, and the ratio engine vs fixed
                (mean time per turn; on a noisy host the ratio is the number to compare).
    contention  RedisStore, the real EmbeddedScheduler of the engine: each of --rounds rounds
                takes the next --slots open flu-shot slots (`open_slots`) and fires --bookers
                concurrent `book` calls from distinct patients spread evenly over them.
                Reported: book() calls/s and successful bookings/s (over the bursts' wall
                time), p50/p99 book() latency within a burst, and two checks: successful
                bookings equal the number of distinct slots requested, and no double booking
                (every patient's `appointments()`: each slot and each provider's time at most
                once).
    readiness   `patientbot readiness` in-process: `run_readiness` on the shipped config, wall
                time of --readiness-runs runs (the NLU model already loaded; its load time,
                what a cold `patientbot readiness` adds, is reported on its own).

Targets (PASS/FAIL): correctness only - no double booking, and successful bookings equal the
distinct slots requested; the flu-shot bookings found in the store equal the conversations
told they are booked. Speed has no target here: compare runs on the same host.

Run it
    make bench-engine                            # starts a private Redis if REDIS_URL is unset
    make -s bench-engine BENCH_ARGS=--json       # script options in BENCH_ARGS; -s: JSON only
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python benchmarks/engine_bench.py \\
        [--conversations 200] [--heldout 0] [--bookers 200] [--slots 20] [--rounds 5] \\
        [--readiness-runs 3] [--stores memory,redis] [--json]

Every run uses fresh random keys and its own Redis key prefix, whose keys are deleted
(SCAN + UNLINK) when a part ends. Exit status: 0 when every part ran and every check passed,
1 when a part failed to complete or a correctness check failed, 2 when REDIS_URL is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hostinfo import host_footer, host_info
from pipeline_bench import delete_keys, percentile, verdict

from bot.app.readiness import run_readiness
from bot.app.runtime import Runtime
from bot.config.loader import Config, load_config
from bot.config.settings import Settings
from bot.core.crypto import load_key_material, new_key
from bot.core.envelopes import Inbound, utcnow
from bot.engine.decision import FrontDeskHandoff
from bot.engine.engine import Engine
from bot.engine.scheduling import Booking, Scheduler, Slot
from bot.messaging.pipeline import Outcome
from bot.ops.logs import configure_logging
from nlu.data import read_heldout
from nlu.service import NluService, project_path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
CHANNEL = "sms"
STORES = ("memory", "redis")

# The clock of the conversations: a Monday morning in clinic hours (as the shipped example
# examples/scenarios/schedule_flu_shot_en.yml), so "next wednesday" has open flu-shot times
# for some weeks, within the 30-day booking horizon.
START = datetime.fromisoformat("2026-12-07T10:00:00-05:00")
ROUND = timedelta(seconds=30)  # clock step between rounds of the flu-shot conversations
VISIT = "flu_shot"
FLOW_TURNS = 5
WARMUP_CONVERSATIONS = 5
WARMUP_HELDOUT = 100
BLOCK = 50  # turns per alternating block (fixed, engine, engine, fixed, ...)
DECIDERS = ("engine", "fixed")


# --- set-up: keys, settings, runtimes --------------------------------------------------------

def bench_settings(config: Config, redis_url: str | None, prefix: str) -> Settings:
    """Fresh random keys (never the development keys under the data directory)."""
    env = {"PATIENTBOT_DATA_KEYS": f"bench:{new_key()}", "PATIENTBOT_LOOKUP_KEY": new_key(),
           "PATIENTBOT_SESSION_SECRET": new_key()}
    return Settings(redis_url=redis_url, redis_prefix=prefix,
                    keys=load_key_material(env, Path(config.app.data_dir)))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def quiet_logging() -> None:
    # Memory runtimes and readiness warn that nothing persists: expected here.
    configure_logging(production=False, level=logging.ERROR)


def key_prefix(run_id: str, part: str = "") -> str:
    return f"ebench-{run_id}-{part}"


# --- workload --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    sender: str
    text: str
    at: datetime
    conversation: int = -1  # flu-shot conversation number; -1 for a held-out message
    step: int = 0


_senders = itertools.count(1)


def new_sender() -> str:
    """A distinct SMS number per conversation (a conversation is channel + sender)."""
    return f"+1555{next(_senders):07d}"


def flu_shot_plan(config: Config, count: int, *, first: int, start: datetime,
                  rng: random.Random) -> list[Message]:
    """`count` staggered 5-turn conversations: conversation i sends turn s in round i + s,
    the members of a round in shuffled order."""
    patients = config.patients
    if not patients:
        raise RuntimeError("config/patients.yml has no sample patients")
    flows = []
    for i in range(count):
        patient = patients[i % len(patients)]
        flows.append((new_sender(), ("I'd like to book a flu shot", patient.name,
                                     patient.dob.strftime("%m/%d/%Y"), "next wednesday", "1")))
    plan = []
    for rnd in range(count + FLOW_TURNS - 1):
        members = [(i, rnd - i) for i in range(max(0, rnd - FLOW_TURNS + 1), min(count, rnd + 1))]
        rng.shuffle(members)
        at = start + rnd * ROUND
        plan += [Message(flows[i][0], flows[i][1][step], at, first + i, step)
                 for i, step in members]
    return plan


def heldout_plan(texts: list[str], *, start: datetime) -> list[Message]:
    return [Message(new_sender(), text, start + i * timedelta(seconds=1))
            for i, text in enumerate(texts)]


def heldout_texts(config: Config, limit: int, rng: random.Random) -> list[str]:
    texts = [e.text for e in read_heldout(project_path(config, config.nlu.heldout_dir))]
    rng.shuffle(texts)
    return texts[:limit] if limit else texts


# --- measuring turns -------------------------------------------------------------------------

@dataclass
class Decider:
    """One runtime under test: the engine, or the fixed front-desk handoff."""

    name: str
    runtime: Runtime
    clock: Clock
    latencies: dict[str, list[float]] = field(default_factory=dict)  # workload -> seconds
    decisions: dict[str, Counter[str]] = field(default_factory=dict)
    flows: dict[int, list[str]] = field(default_factory=dict)  # conversation -> codes
    by_step: dict[int, list[float]] = field(default_factory=dict)  # flu-shot turn -> seconds
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def turn(self, message: Message, workload: str | None, run_tag: str) -> None:
        self.clock.now = message.at
        inbound = Inbound(channel=CHANNEL, sender=message.sender,
                          provider_message_id=f"{run_tag}-{next(self._ids):08d}",
                          text=message.text, received_at=message.at)
        entry = await self.runtime.ingress.submit(inbound)
        started = time.perf_counter()
        result = await self.runtime.pipeline.handle(entry)
        elapsed = time.perf_counter() - started
        code = result.decision if result.outcome is Outcome.PROCESSED else result.outcome.value
        if message.conversation >= 0:
            self.flows.setdefault(message.conversation, []).append(code)
        if workload is not None:
            self.latencies.setdefault(workload, []).append(elapsed)
            if message.conversation >= 0:
                self.by_step.setdefault(message.step + 1, []).append(elapsed)
            self.decisions.setdefault(workload, Counter())[code] += 1


async def run_alternating(deciders: list[Decider], messages: list[Message],
                          workload: str | None, run_tag: str) -> None:
    """Every decider gets the same messages, block by block, in alternating order."""
    for number, begin in enumerate(range(0, len(messages), BLOCK)):
        block = messages[begin:begin + BLOCK]
        for decider in (deciders if number % 2 == 0 else deciders[::-1]):
            for message in block:
                await decider.turn(message, workload, run_tag)


@dataclass
class TurnStats:
    turns: int
    turns_per_s: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> TurnStats:
        ms = sorted(s * 1000 for s in seconds)
        return cls(turns=len(ms), turns_per_s=round(len(ms) / (sum(ms) / 1000), 1),
                   mean_ms=round(statistics.fmean(ms), 3), p50_ms=round(percentile(ms, 0.5), 3),
                   p99_ms=round(percentile(ms, 0.99), 3), max_ms=round(ms[-1], 3))


@dataclass
class WorkloadResult:
    store: str
    workload: str
    engine: TurnStats
    fixed: TurnStats
    ratio_mean: float  # engine mean time per turn / fixed mean time per turn
    ratio_p50: float
    decisions: dict[str, int]  # the engine's decision codes
    engine_by_turn: dict[int, TurnStats] = field(default_factory=dict)  # flu-shot turn 1-5


@dataclass
class FlowOutcomes:
    store: str
    conversations: int
    booked: int = 0
    taken: int = 0  # the chosen time was taken meanwhile; next times re-offered
    no_slots: int = 0  # no open time: handed to scheduling
    other: dict[str, int] = field(default_factory=dict)
    stored_bookings: int = 0  # every flow's, the warm-up's included
    booked_all: int = 0  # conversations told they are booked, the warm-up's included
    double_booked: int = 0

    def consistent(self) -> bool:
        return self.stored_bookings == self.booked_all and self.double_booked == 0


EXPECTED_FLOW = ("verify_identity", "identity_name", "script_started", "script_step")


def classify(codes: list[str]) -> str:
    if len(codes) == FLOW_TURNS and tuple(codes[:4]) == EXPECTED_FLOW:
        return {"script_completed": "booked", "script_step": "taken"}.get(
            codes[4], f"turn 5: {codes[4]}")
    if len(codes) == FLOW_TURNS and tuple(codes[:3]) == EXPECTED_FLOW[:3] \
            and codes[3] == "script_handoff":
        return "no_slots"
    wrong = next((i for i, code in enumerate(codes) if i >= 4 or code != EXPECTED_FLOW[i]),
                 len(codes) - 1)
    return f"turn {wrong + 1}: {codes[wrong]}"


def double_bookings(bookings: list[Booking]) -> int:
    """Bookings that share, or overlap, another booking's time with the same provider."""
    clashes = 0
    by_provider: dict[str, list[Booking]] = {}
    for booking in bookings:
        by_provider.setdefault(booking.provider, []).append(booking)
    for items in by_provider.values():
        items.sort(key=lambda b: b.start)
        clashes += sum(1 for a, b in itertools.pairwise(items) if b.start < a.end)
    return clashes


async def flow_outcomes(store: str, engine: Decider, measured: range,
                        config: Config) -> FlowOutcomes:
    result = FlowOutcomes(store, len(measured))
    for conversation in measured:
        kind = classify(engine.flows.get(conversation, []))
        if kind in ("booked", "taken", "no_slots"):
            setattr(result, kind, getattr(result, kind) + 1)
        else:
            result.other[kind] = result.other.get(kind, 0) + 1
    result.booked_all = sum(1 for codes in engine.flows.values()
                            if classify(codes) == "booked")
    step = engine.runtime.decision_step
    assert isinstance(step, Engine)
    bookings = [b for p in config.patients
                for b in await step.scheduler.appointments(p.id, now=START)]
    result.stored_bookings = len(bookings)
    result.double_booked = double_bookings(bookings)
    return result


async def measure_store(store: str, config: Config, args: argparse.Namespace,
                        redis_url: str | None, run_id: str, texts: list[str],
                        report: Report) -> None:
    """Both workloads on one kind of store, engine and fixed runtimes side by side."""
    deciders = []
    try:
        for name in DECIDERS:
            clock = Clock(START)
            settings = bench_settings(config, redis_url if store == "redis" else None,
                                      key_prefix(run_id, f"{store}-{name}"))
            runtime = Runtime.build(config, settings, clock=clock,
                                    decision_step=None if name == "engine" else FrontDeskHandoff)
            deciders.append(Decider(name, runtime, clock))
        rng = random.Random(args.seed)
        tag = f"{run_id}-{store}"
        warm = flu_shot_plan(config, WARMUP_CONVERSATIONS, first=0, start=START, rng=rng)
        warm += heldout_plan(texts[:WARMUP_HELDOUT], start=warm[-1].at + ROUND)
        await run_alternating(deciders, warm, None, tag)
        flows = flu_shot_plan(config, args.conversations, first=WARMUP_CONVERSATIONS,
                              start=warm[-1].at + ROUND, rng=rng)
        await run_alternating(deciders, flows, "flu-shot", tag)
        await run_alternating(deciders, heldout_plan(texts, start=flows[-1].at + ROUND),
                              "held-out", tag)
        engine, fixed = deciders
        for workload in ("flu-shot", "held-out"):
            e, f = TurnStats.of(engine.latencies[workload]), TurnStats.of(fixed.latencies[workload])
            report.turns.append(WorkloadResult(
                store, workload, e, f, ratio_mean=round(e.mean_ms / f.mean_ms, 2),
                ratio_p50=round(e.p50_ms / f.p50_ms, 2),
                decisions=dict(engine.decisions[workload].most_common()),
                engine_by_turn={step: TurnStats.of(seconds) for step, seconds
                                in sorted(engine.by_step.items())}
                if workload == "flu-shot" else {}))
        measured = range(WARMUP_CONVERSATIONS, WARMUP_CONVERSATIONS + args.conversations)
        report.flows.append(await flow_outcomes(store, engine, measured, config))
    finally:
        for decider in deciders:
            await decider.runtime.close()
        if store == "redis" and redis_url:
            await delete_keys(redis_url, key_prefix(run_id, f"{store}-") + "*")


# --- booking contention ----------------------------------------------------------------------

@dataclass
class ContentionResult:
    rounds: int
    bookers: int  # concurrent book() calls per round
    slots: int  # open slots requested per round
    calls: int = 0
    seconds: float = 0.0  # summed wall time of the bursts
    calls_per_s: float = 0.0
    bookings_per_s: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    successful: int = 0
    distinct_slots_requested: int = 0
    stored_bookings: int = 0
    double_booked: int = 0  # bookings clashing with another one's time
    booked_unrequested: int = 0  # stored bookings for a slot nobody requested

    def counts_pass(self) -> bool:
        return self.successful == self.distinct_slots_requested == self.stored_bookings

    def no_double_booking_pass(self) -> bool:
        return self.double_booked == 0 and self.booked_unrequested == 0 \
            and self.stored_bookings == self.successful


async def timed_book(scheduler: Scheduler, patient: str, slot: Slot,
                     now: datetime) -> tuple[Booking | None, float]:
    started = time.perf_counter()
    booking = await scheduler.book(patient, slot, now=now)
    return booking, time.perf_counter() - started


async def booking_contention(config: Config, args: argparse.Namespace, redis_url: str,
                             run_id: str) -> ContentionResult:
    """Rounds of concurrent book() calls on the engine's own scheduler over RedisStore."""
    prefix = key_prefix(run_id, "contention")
    runtime = Runtime.build(config, bench_settings(config, redis_url, prefix))
    result = ContentionResult(args.rounds, args.bookers, args.slots)
    rng = random.Random(args.seed)
    try:
        engine = runtime.decision_step
        assert isinstance(engine, Engine)
        scheduler = engine.scheduler
        latencies: list[float] = []
        patients: list[str] = []
        requested: set[Slot] = set()
        for number in range(args.rounds):
            slots = await scheduler.open_slots(VISIT, now=START, limit=args.slots)
            if len(slots) < args.slots:
                raise RuntimeError(f"round {number + 1}: only {len(slots)} open {VISIT} slots")
            calls = [(f"EB-{run_id}-{number}-{i:05d}", slots[i % len(slots)])
                     for i in range(args.bookers)]
            rng.shuffle(calls)
            started = time.perf_counter()
            outcomes = await asyncio.gather(*(timed_book(scheduler, patient, slot, START)
                                              for patient, slot in calls))
            result.seconds += time.perf_counter() - started
            latencies += [seconds for _, seconds in outcomes]
            result.successful += sum(1 for booking, _ in outcomes if booking is not None)
            result.distinct_slots_requested += len({slot for _, slot in calls})
            requested |= {slot for _, slot in calls}
            patients += [patient for patient, _ in calls]
        stored = [b for found in await asyncio.gather(
            *(scheduler.appointments(p, now=START) for p in patients)) for b in found]
        result.calls = len(latencies)
        result.calls_per_s = round(result.calls / result.seconds, 1)
        result.bookings_per_s = round(result.successful / result.seconds, 1)
        ms = sorted(s * 1000 for s in latencies)
        result.p50_ms, result.p99_ms = round(percentile(ms, 0.5), 2), round(percentile(ms, 0.99), 2)
        result.seconds = round(result.seconds, 3)
        result.stored_bookings = len(stored)
        result.double_booked = double_bookings(stored)
        result.booked_unrequested = sum(1 for b in stored if b.slot not in requested)
    finally:
        await runtime.close()
        await delete_keys(redis_url, f"{prefix}:*")
    return result


# --- readiness -------------------------------------------------------------------------------

@dataclass
class ReadinessResult:
    runs: int
    cases: int
    cases_ok: int  # in the last run
    first_s: float
    median_s: float
    min_s: float
    nlu_model_load_s: float  # NluService.shared, once per process: what a cold CLI adds


async def readiness(config: Config, runs: int, model_load: float) -> ReadinessResult:
    times, results = [], []
    for _ in range(runs):
        started = time.perf_counter()
        results = await run_readiness(config, now=utcnow())
        times.append(time.perf_counter() - started)
    return ReadinessResult(runs=runs, cases=len(results),
                           cases_ok=sum(1 for r in results if r.ok), first_s=round(times[0], 3),
                           median_s=round(statistics.median(times), 3),
                           min_s=round(min(times), 3), nlu_model_load_s=round(model_load, 2))


# --- the run ---------------------------------------------------------------------------------

@dataclass
class Report:
    turns: list[WorkloadResult] = field(default_factory=list)
    flows: list[FlowOutcomes] = field(default_factory=list)
    contention: ContentionResult | None = None
    readiness: ReadinessResult | None = None
    errors: list[str] = field(default_factory=list)

    def checks(self) -> dict[str, bool]:
        checks = {f"flu-shot bookings consistent ({f.store})": f.consistent()
                  for f in self.flows}
        if self.contention is not None:
            checks["successful bookings == distinct slots requested"] = \
                self.contention.counts_pass()
            checks["no double booking"] = self.contention.no_double_booking_pass()
        return checks

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checks": self.checks()}


async def run_all(args: argparse.Namespace, redis_url: str | None, run_id: str) -> Report:
    report = Report()
    config = load_config(args.config)
    started = time.perf_counter()
    NluService.shared(config)  # what every Runtime.build below then shares
    model_load = time.perf_counter() - started
    texts = heldout_texts(config, args.heldout, random.Random(args.seed))

    async def part(name: str, work: Any) -> Any:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            return await work
        except Exception as err:  # keep the other parts' numbers
            report.errors.append(f"{name}: {type(err).__name__}: {err}")
            return None

    for store in args.store_list:
        await part(f"turns on {store}",
                   measure_store(store, config, args, redis_url, run_id, texts, report))
    if args.rounds and redis_url:
        report.contention = await part("booking contention on redis",
                                       booking_contention(config, args, redis_url, run_id))
    if args.readiness_runs:
        report.readiness = await part("readiness",
                                      readiness(config, args.readiness_runs, model_load))
    return report


# --- output ----------------------------------------------------------------------------------

def print_table(report: Report, args: argparse.Namespace, host: dict[str, Any]) -> None:
    print("Conversation turns through pipeline.handle, one at a time (times in ms; ratio = "
          "engine / fixed,\nmean time per turn and p50)")
    print(f"{'store':<7} {'workload':<9} {'turns':>5} | {'engine/s':>8} {'p50':>6} {'p99':>6} | "
          f"{'fixed/s':>8} {'p50':>6} {'p99':>6} | {'ratio':>5} {'r p50':>5}")
    print("-" * 86)
    for r in report.turns:
        e, f = r.engine, r.fixed
        print(f"{r.store:<7} {r.workload:<9} {e.turns:>5} | {e.turns_per_s:>8.0f} "
              f"{e.p50_ms:>6.2f} {e.p99_ms:>6.2f} | {f.turns_per_s:>8.0f} {f.p50_ms:>6.2f} "
              f"{f.p99_ms:>6.2f} | {r.ratio_mean:>5.1f} {r.ratio_p50:>5.1f}")
    for r in report.turns:
        if r.engine_by_turn:
            steps = "  ".join(f"{step}) {t.p50_ms:.2f}/{t.p99_ms:.2f}"
                              for step, t in r.engine_by_turn.items())
            print(f"flu-shot engine p50/p99 by turn ({r.store}): {steps}")
    for r in report.turns:
        if r.workload == "held-out":
            top = ", ".join(f"{code} {n}" for code, n in list(r.decisions.items())[:6])
            print(f"held-out engine decisions ({r.store}): {top}")
    for f in report.flows:
        other = "".join(f"; {kind} {n}" for kind, n in f.other.items())
        print(f"flu-shot conversations ({f.store}): {f.conversations}: booked {f.booked}, "
              f"taken+re-offered {f.taken}, no open slots {f.no_slots}{other or ', other 0'}; "
              f"stored bookings {f.stored_bookings} for {f.booked_all} booked (warm-up "
              f"included), double-booked {f.double_booked}: {verdict(f.consistent())}")
    c = report.contention
    if c is not None:
        print()
        print(f"Booking contention, RedisStore, {c.rounds} rounds x {c.bookers} concurrent "
              f"book() over {c.slots} open {VISIT} slots")
        print(f"  book() calls/s {c.calls_per_s:,.0f}  successful bookings/s "
              f"{c.bookings_per_s:,.0f}  ({c.calls} calls in {c.seconds:.2f} s; p50 "
              f"{c.p50_ms:.1f} ms, p99 {c.p99_ms:.1f} ms per call within a burst)")
        print(f"  successful bookings {c.successful} == distinct slots requested "
              f"{c.distinct_slots_requested} (stored {c.stored_bookings}): "
              f"{verdict(c.counts_pass())}")
        print(f"  no double booking (appointments(): {c.double_booked} clashes, "
              f"{c.booked_unrequested} unrequested): {verdict(c.no_double_booking_pass())}")
    r = report.readiness
    if r is not None:
        print()
        print(f"patientbot readiness in-process (run_readiness, {r.cases} cases, {r.cases_ok} "
              f"ok): median {r.median_s:.2f} s, min {r.min_s:.2f} s, first {r.first_s:.2f} s "
              f"over {r.runs} runs;\n  NLU model load {r.nlu_model_load_s:.2f} s once per "
              "process (a cold `patientbot readiness` pays it too)")
    for error in report.errors:
        print(f"ERROR {error}")
    print(host_footer(host))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure engine turns, booking contention and the readiness check.")
    parser.add_argument("--conversations", type=int, default=200,
                        help="flu-shot booking conversations per store, 5 turns each "
                             "(default 200)")
    parser.add_argument("--heldout", type=int, default=0,
                        help="held-out messages per store (default 0: all of them)")
    parser.add_argument("--bookers", type=int, default=200,
                        help="concurrent book() calls per contention round (default 200)")
    parser.add_argument("--slots", type=int, default=20,
                        help="open slots the bookers are spread over (default 20)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="contention rounds, each on the next open slots (default 5; "
                             "0 skips the contention part)")
    parser.add_argument("--readiness-runs", type=int, default=3,
                        help="runs of the readiness check (default 3; 0 skips it)")
    parser.add_argument("--stores", default=",".join(STORES),
                        help="comma-separated subset of: memory, redis (default: both)")
    parser.add_argument("--seed", type=int, default=1, help="shuffling seed (default 1)")
    parser.add_argument("--config", type=Path, default=CONFIG_DIR,
                        help="config directory (default: the repository's config/)")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable results instead of the tables")
    args = parser.parse_args(argv)
    if args.conversations < 1 or args.heldout < 0 or args.bookers < 1 or args.slots < 1 \
            or args.rounds < 0 or args.readiness_runs < 0:
        parser.error("--conversations, --bookers and --slots must be positive; --heldout, "
                     "--rounds and --readiness-runs not negative")
    args.store_list = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = [s for s in args.store_list if s not in STORES]
    if unknown:
        parser.error(f"unknown store(s) {unknown}; choose from {', '.join(STORES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    redis_url = os.environ.get("REDIS_URL") or None
    if redis_url is None and ("redis" in args.store_list or args.rounds):
        print("engine_bench: REDIS_URL is not set (use `make bench-engine`, which starts a "
              "private Redis, or choose --stores memory --rounds 0)", file=sys.stderr)
        return 2
    host = host_info()
    run_id = uuid.uuid4().hex[:8]
    try:
        report = asyncio.run(run_all(args, redis_url, run_id))
    finally:
        if redis_url:  # again, now that leftover tasks are gone (a failed part's)
            asyncio.run(delete_keys(redis_url, key_prefix(run_id) + "*"))
    if args.json:
        print(json.dumps({"settings": {"conversations": args.conversations,
                                       "stores": args.store_list, "bookers": args.bookers,
                                       "slots": args.slots, "rounds": args.rounds,
                                       "readiness_runs": args.readiness_runs,
                                       "clock_start": START.isoformat(), "seed": args.seed},
                          "host": host, **report.as_dict()}, indent=2))
    else:
        print_table(report, args, host)
    return 1 if report.errors or not all(report.checks().values()) else 0


if __name__ == "__main__":
    sys.exit(main())
