"""Pipeline benchmark: portal message in -> reply delivered, through the real Runtime.

What is measured
    Portal-like `Inbound` envelopes go through `runtime.ingress.submit` (sealed, appended to
    the ingress queue) and are processed by real `Worker`s: dedupe, conversation lock,
    session, decision step (the default front-desk handoff), atomic commit, outbox delivery
    through the portal adapter into the patient's mailbox. The portal adapter is wrapped to
    note the wall-clock time each reply is delivered; a message's latency is from
    `Inbound.received_at` (the submit time, or the scheduled time under paced load) to the
    delivery of its reply.

    The message mix: 80 % of messages come from distinct senders (one message each), 20 %
    from repeated senders sending a burst of 5 back to back, which exercises conversation
    locks and per-conversation sequencing. A sender's first message is handed off and gets a
    reply; follow-ups in a handed-off conversation are relayed without a reply (at most one
    follow-up acknowledgement per 10 minutes), so latency percentiles cover replies, while
    completion also waits until every message's turn is committed.

Scenarios (--scenarios, comma separated)
    memory-1w   MemoryStore, one worker in the submitting process
    redis-1w    RedisStore, one worker in the submitting process
    redis-1p    RedisStore, one worker process; the submitting process runs no worker
    redis-2p    RedisStore, two worker processes; the submitting process runs no worker

For each scenario, after a short warm-up:
    throughput  submit --messages as fast as possible; messages/s until every reply is
                delivered and every turn committed, plus p50/p99 reply latency;
    paced       submit at --rate messages/s for --duration seconds; p50/p99/max latency.

Targets (PASS/FAIL): throughput >= 1,000 msg/s for RedisStore with one worker, and p99 <= 20 ms
at 200 msg/s offered load.

Run it
    make bench                                   # starts a private Redis if REDIS_URL is unset
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python benchmarks/pipeline_bench.py \\
        [--messages 5000] [--rate 200] [--duration 10] [--scenarios redis-1w,redis-2p] [--json]

Every run uses fresh random keys and its own Redis key prefix, whose keys are deleted
(SCAN + UNLINK) when the scenario ends.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import random
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as redis

from bot.config import load_config
from bot.crypto import new_key
from bot.envelopes import Inbound, Outbound
from bot.logs import configure_logging
from bot.runtime import Runtime
from bot.settings import load_settings
from channels.base import ChannelAdapter

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
CHANNEL = "portal"

TARGET_THROUGHPUT = 1000.0  # msg/s, RedisStore with one worker
TARGET_P99_MS = 20.0  # at the paced offered load

REPEAT_SHARE = 0.2  # share of messages sent by repeated senders
BURST = 5  # messages per repeated sender, back to back
SUBMITTERS = 16  # concurrent submitting tasks in throughput mode
WARMUP_MESSAGES = 300
REPORT_INTERVAL = 0.01  # how often worker processes report deliveries
STALL_TIMEOUT = 30.0  # give up when nothing completes for this long
TEXTS = (
    "Hi, I need to move my appointment next Tuesday to later in the week.",
    "Can you tell me where to park for my visit at the Riverside clinic?",
    "I'd like a copy of my records sent to my new doctor please.",
    "Question about my last bill, I think I was charged twice.",
    "I can't log in to the portal, it says my account is locked.",
)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    redis: bool
    worker_processes: int  # 0: one worker inside the submitting process
    throughput_target: bool  # is the >= 1,000 msg/s target checked here?


SCENARIOS = {s.name: s for s in (
    Scenario("memory-1w", "MemoryStore, 1 in-process worker", False, 0, False),
    Scenario("redis-1w", "RedisStore, 1 in-process worker", True, 0, True),
    Scenario("redis-1p", "RedisStore, 1 worker process", True, 1, True),
    Scenario("redis-2p", "RedisStore, 2 worker processes", True, 2, False),
)}
DEFAULT_SCENARIOS = "memory-1w,redis-1w,redis-1p,redis-2p"


# --- set-up: keys, settings, runtime --------------------------------------------------------

def bench_env(redis_url: str | None, prefix: str) -> dict[str, str]:
    """Fresh random keys in the environment format `patientbot worker` reads."""
    env = {"PATIENTBOT_DATA_KEYS": f"bench:{new_key()}", "PATIENTBOT_LOOKUP_KEY": new_key(),
           "PATIENTBOT_SESSION_SECRET": new_key(), "PATIENTBOT_REDIS_PREFIX": prefix}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def build_runtime(env: dict[str, str]) -> Runtime:
    """The real Runtime, from the repository config and settings read from `env`."""
    config = load_config(CONFIG_DIR)
    return Runtime.build(config, load_settings(config, env))


def quiet_logging() -> None:
    configure_logging(production=False, level=logging.WARNING)


class TimedPortal:
    """The real portal adapter, noting when each reply has reached the patient's mailbox."""

    name = CHANNEL

    def __init__(self, inner: ChannelAdapter, on_delivered: Callable[[str, float], None]) -> None:
        self._inner = inner
        self._on_delivered = on_delivered

    async def send(self, message: Outbound) -> str | None:
        provider_id = await self._inner.send(message)
        self._on_delivered(message.in_reply_to or "", time.time())
        return provider_id


def time_deliveries(runtime: Runtime, on_delivered: Callable[[str, float], None]) -> None:
    runtime.channels.register(TimedPortal(runtime.channels.get(CHANNEL), on_delivered))


async def delete_keys(redis_url: str, prefix: str) -> int:
    """SCAN + UNLINK every key under the run's prefix."""
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted


# --- workload --------------------------------------------------------------------------------

def message_plan(count: int, *, tag: str, seed: int) -> list[list[tuple[str, str]]]:
    """Bursts of (sender, text): mostly one-message senders, some repeated senders."""
    rng = random.Random(seed)
    repeated = int(count * REPEAT_SHARE) // BURST
    singles = count - repeated * BURST
    bursts = [[(f"P-{tag}-r{i}", rng.choice(TEXTS)) for _ in range(BURST)]
              for i in range(repeated)]
    bursts += [[(f"P-{tag}-s{i}", rng.choice(TEXTS))] for i in range(singles)]
    rng.shuffle(bursts)
    return bursts


_message_numbers = itertools.count()
_RUN_TAG = uuid.uuid4().hex[:12]


def portal_inbound(sender: str, text: str, received_at: datetime) -> Inbound:
    """What the portal channel builds for a signed-in patient's message (the provider
    message id is `<portal session>:<client message id>` there)."""
    return Inbound(channel=CHANNEL, sender=sender,
                   provider_message_id=f"{_RUN_TAG}:{next(_message_numbers):010d}",
                   text=text, received_at=received_at, verified_patient=sender)


# --- workers and what they report ----------------------------------------------------------

@dataclass
class Tracker:
    """Submitted messages and delivered replies, keyed by provider message id."""

    received: dict[str, float] = field(default_factory=dict)
    delivered: dict[str, float] = field(default_factory=dict)

    def on_delivered(self, provider_message_id: str, at: float) -> None:
        self.delivered.setdefault(provider_message_id, at)


class Workers(Protocol):
    async def start(self) -> None: ...

    def processed(self) -> int:
        """Turns committed so far (all workers, since start)."""

    def cpu_seconds(self) -> float:
        """CPU time used by worker processes (0 when the worker runs in this process)."""

    async def stop(self) -> None: ...


class InProcessWorker:
    """One `runtime.new_worker()` on the submitting process's event loop."""

    def __init__(self, runtime: Runtime, tracker: Tracker) -> None:
        time_deliveries(runtime, tracker.on_delivered)
        self._worker = runtime.new_worker()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._worker.run(self._stop))

    def processed(self) -> int:
        return self._worker.processed

    def cpu_seconds(self) -> float:
        return 0.0

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def worker_process_main(env: dict[str, str], index: int, stop: Any, reports: Any) -> None:
    """Child process: what `patientbot worker` runs, plus delivery reports to the parent."""
    quiet_logging()
    asyncio.run(_worker_process(env, index, stop, reports))


async def _worker_process(env: dict[str, str], index: int, stop: Any, reports: Any) -> None:
    runtime = build_runtime(env)
    delivered: list[tuple[str, float]] = []
    time_deliveries(runtime, lambda pmid, at: delivered.append((pmid, at)))
    worker = runtime.new_worker()
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    reports.put(("ready", index, None))
    reported = 0

    def flush() -> None:
        nonlocal delivered, reported
        if delivered:
            reports.put(("delivered", index, delivered))
            delivered = []
        if worker.processed != reported:
            reported = worker.processed
            reports.put(("processed", index, (reported, time.process_time())))

    try:
        while not stop.is_set():
            await asyncio.sleep(REPORT_INTERVAL)
            flush()
    finally:
        stopping.set()
        await task
        flush()
        await runtime.close()


class WorkerProcesses:
    """N child processes, each running a real Worker against the shared Redis."""

    def __init__(self, env: dict[str, str], count: int, tracker: Tracker) -> None:
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._reports = self._ctx.Queue()
        self._tracker = tracker
        self._processed = [0] * count
        self._cpu = [0.0] * count
        self._ready = 0
        self._procs = [self._ctx.Process(target=worker_process_main,
                                         args=(env, i, self._stop, self._reports), daemon=True)
                       for i in range(count)]
        self._drain_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for proc in self._procs:
            proc.start()
        self._drain_task = asyncio.create_task(self._drain_forever())
        deadline = time.monotonic() + 60
        while self._ready < len(self._procs):
            if time.monotonic() > deadline or any(p.exitcode is not None for p in self._procs):
                raise RuntimeError("worker processes did not start")
            await asyncio.sleep(0.05)

    def processed(self) -> int:
        return sum(self._processed)

    def cpu_seconds(self) -> float:
        return sum(self._cpu)

    def _drain(self) -> None:
        while True:
            try:
                kind, index, payload = self._reports.get_nowait()
            except queue.Empty:
                return
            if kind == "ready":
                self._ready += 1
            elif kind == "processed":
                self._processed[index], self._cpu[index] = payload
            else:
                for pmid, at in payload:
                    self._tracker.on_delivered(pmid, at)

    async def _drain_forever(self) -> None:
        while True:
            self._drain()
            await asyncio.sleep(REPORT_INTERVAL / 2)

    async def stop(self) -> None:
        self._stop.set()
        for proc in self._procs:
            await asyncio.to_thread(proc.join, 15)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._drain()


# --- phases ----------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    messages: int
    replies: int
    seconds: float
    rate: float  # messages completed per second
    submit_seconds: float
    cpu_ms_per_message: float  # client CPU (submitter + workers), Redis excluded
    p50_ms: float
    p99_ms: float
    max_ms: float


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


async def submit(runtime: Runtime, tracker: Tracker, sender: str, text: str,
                 received_at: datetime | None = None) -> None:
    received_at = received_at or datetime.now(timezone.utc)
    inbound = portal_inbound(sender, text, received_at)
    tracker.received[inbound.provider_message_id] = received_at.timestamp()
    await runtime.ingress.submit(inbound)


async def submit_flat_out(runtime: Runtime, tracker: Tracker,
                          bursts: list[list[tuple[str, str]]]) -> None:
    """Several submitters; each sends whole bursts, so a sender's messages stay in order."""
    todo = deque(bursts)

    async def submitter() -> None:
        while todo:
            for sender, text in todo.popleft():
                await submit(runtime, tracker, sender, text)

    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))


async def submit_paced(runtime: Runtime, tracker: Tracker,
                       bursts: list[list[tuple[str, str]]], rate: float) -> None:
    """One message every 1/rate s; `received_at` is the scheduled time, so a submitter that
    falls behind is charged to latency rather than hidden (no coordinated omission)."""
    start = time.time() + 0.05
    messages = [m for burst in bursts for m in burst]
    for i, (sender, text) in enumerate(messages):
        scheduled = start + i / rate
        delay = scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await submit(runtime, tracker, sender, text,
                     datetime.fromtimestamp(scheduled, timezone.utc))


async def wait_until_done(workers: Workers, tracker: Tracker, *, processed_target: int,
                          replies_target: int) -> None:
    """Poll until every turn is committed and every expected reply delivered."""
    last_progress, last_count = time.monotonic(), -1
    while True:
        done, replies = workers.processed(), len(tracker.delivered)
        if done >= processed_target and replies >= replies_target:
            return
        if done + replies != last_count:
            last_progress, last_count = time.monotonic(), done + replies
        elif time.monotonic() - last_progress > STALL_TIMEOUT:
            raise RuntimeError(f"stalled: {done}/{processed_target} turns, "
                               f"{replies}/{replies_target} replies")
        await asyncio.sleep(0.005)


async def run_phase(runtime: Runtime, workers: Workers, tracker: Tracker,
                    bursts: list[list[tuple[str, str]]], *, rate: float | None) -> PhaseResult:
    """Submit `bursts` (flat out, or paced at `rate`) and wait for every reply."""
    count = sum(len(b) for b in bursts)
    senders = len(bursts)  # each sender's first message is answered
    before_ids = set(tracker.received)
    processed_target = workers.processed() + count
    cpu_before = time.process_time() + workers.cpu_seconds()
    replies_target = len(tracker.delivered) + senders
    started = time.time()
    if rate is None:
        await submit_flat_out(runtime, tracker, bursts)
    else:
        await submit_paced(runtime, tracker, bursts, rate)
    submitted = time.time()
    pmids = set(tracker.received) - before_ids
    await wait_until_done(workers, tracker, processed_target=processed_target,
                          replies_target=replies_target)
    finished = time.time()  # at most one poll interval (5 ms) late
    cpu = time.process_time() + workers.cpu_seconds() - cpu_before
    delivered = [p for p in pmids if p in tracker.delivered]
    latencies = sorted((tracker.delivered[p] - tracker.received[p]) * 1000 for p in delivered)
    if rate is not None:
        started = min(tracker.received[p] for p in pmids)
    elapsed = finished - started
    return PhaseResult(messages=count, replies=len(latencies), seconds=round(elapsed, 3),
                       rate=round(count / elapsed, 1), submit_seconds=round(submitted - started, 3),
                       cpu_ms_per_message=round(cpu * 1000 / count, 3),
                       p50_ms=round(percentile(latencies, 0.50), 2),
                       p99_ms=round(percentile(latencies, 0.99), 2),
                       max_ms=round(latencies[-1] if latencies else math.nan, 2))


# --- scenarios -------------------------------------------------------------------------------

@dataclass
class ScenarioResult:
    scenario: str
    description: str
    throughput: PhaseResult
    paced: PhaseResult
    offered_rate: float
    throughput_pass: bool | None
    p99_pass: bool


def start_workers(scenario: Scenario, env: dict[str, str], runtime: Runtime,
                  tracker: Tracker) -> Workers:
    if scenario.worker_processes:
        return WorkerProcesses(env, scenario.worker_processes, tracker)
    return InProcessWorker(runtime, tracker)


async def run_scenario(scenario: Scenario, args: argparse.Namespace, redis_url: str | None,
                       run_id: str) -> ScenarioResult:
    prefix = f"pbbench-{run_id}-{scenario.name}"
    env = bench_env(redis_url if scenario.redis else None, prefix)
    runtime = build_runtime(env)
    tracker = Tracker()
    workers = start_workers(scenario, env, runtime, tracker)
    try:
        await workers.start()
        await run_phase(runtime, workers, tracker,
                        message_plan(WARMUP_MESSAGES, tag="warm", seed=1), rate=None)
        throughput = await run_phase(runtime, workers, tracker,
                                     message_plan(args.messages, tag="tp", seed=2), rate=None)
        paced_count = max(1, int(args.rate * args.duration))
        paced = await run_phase(runtime, workers, tracker,
                                message_plan(paced_count, tag="pace", seed=3), rate=args.rate)
    finally:
        await workers.stop()
        await runtime.close()
        if scenario.redis and redis_url:
            await delete_keys(redis_url, prefix)
    return ScenarioResult(
        scenario=scenario.name, description=scenario.description,
        throughput=throughput, paced=paced, offered_rate=args.rate,
        throughput_pass=(throughput.rate >= TARGET_THROUGHPUT
                         if scenario.throughput_target else None),
        p99_pass=paced.p99_ms <= TARGET_P99_MS)


# --- output ----------------------------------------------------------------------------------

def verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def print_table(results: Iterable[ScenarioResult], rate: float, host: dict[str, Any]) -> None:
    header = (f"{'scenario':<10} {'msg/s':>6} {'cpu/msg':>7} {'p50':>7} {'p99':>7} | "
              f"{'@' + format(rate, 'g') + '/s p50':>11} {'p99':>6} {'max':>6} | "
              f"{'>=1000/s':>8} {'p99<=20':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        t, p = r.throughput, r.paced
        print(f"{r.scenario:<10} {t.rate:>6.0f} {t.cpu_ms_per_message:>7.2f} {t.p50_ms:>7.0f} "
              f"{t.p99_ms:>7.0f} | {p.p50_ms:>11.1f} {p.p99_ms:>6.1f} {p.max_ms:>6.1f} | "
              f"{verdict(r.throughput_pass):>8} {verdict(r.p99_pass):>7}")
    print(f"ms; latency = submit -> reply delivered; msg/s and client cpu/msg count every "
          f"message; {host['cpus']} CPUs, load average {host['loadavg_start']} at start")


def host_info() -> dict[str, Any]:
    """Context for reading the numbers: a busy machine slows every scenario."""
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0],
            "loadavg_start": round(os.getloadavg()[0], 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000,
                        help="messages in the throughput phase (default 5000)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="offered load of the paced phase, msg/s (default 200)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="length of the paced phase, seconds (default 10)")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                        help=f"comma-separated subset of {', '.join(SCENARIOS)} "
                             f"(default: all)")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable results instead of the table")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    args.scenario_list = [SCENARIOS[n] for n in names]
    return args


async def main_async(args: argparse.Namespace, redis_url: str | None) -> list[ScenarioResult]:
    run_id = uuid.uuid4().hex[:8]
    results = []
    for scenario in args.scenario_list:
        print(f"[bench] {scenario.name}: {scenario.description} ...", file=sys.stderr, flush=True)
        results.append(await run_scenario(scenario, args, redis_url, run_id))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    redis_url = os.environ.get("REDIS_URL") or None
    if redis_url is None and any(s.redis for s in args.scenario_list):
        print("pipeline_bench: REDIS_URL is not set (use `make bench`, which starts a private "
              "Redis, or choose --scenarios memory-1w)", file=sys.stderr)
        return 2
    host = host_info()
    results = asyncio.run(main_async(args, redis_url))
    if args.json:
        print(json.dumps({"targets": {"throughput_msg_s": TARGET_THROUGHPUT,
                                      "p99_ms": TARGET_P99_MS, "offered_rate": args.rate},
                          "host": host, "results": [asdict(r) for r in results]}, indent=2))
    else:
        print_table(results, args.rate, host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
