"""Pipeline benchmark: portal message in -> reply delivered, through the real Runtime.

What is measured
    Portal-like `Inbound` envelopes go through `runtime.ingress.submit` (sealed, appended to
    the ingress queue) and are processed by real `Worker`s: dedupe, conversation lock,
    session, decision step (the fixed front-desk handoff; the NLU is measured by
    benchmarks/nlu_bench.py), atomic commit, outbox delivery
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
                delivered and every turn committed, client CPU per message (submitter and
                workers, not Redis), and p50/p99 reply latency (mostly queueing here);
    paced       submit at --rate messages/s for --duration seconds; p50/p99/max latency.
The host's load average is printed with the results: other work on the machine shows up
directly in the latency tail, so compare runs made on a quiet host.

Targets (PASS/FAIL): throughput >= 1,000 msg/s for RedisStore with one worker, and p99 <= 20 ms
at 200 msg/s offered load.

Run it
    make bench                                   # starts a private Redis if REDIS_URL is unset
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python benchmarks/pipeline_bench.py \\
        [--messages 5000] [--rate 200] [--duration 10] [--scenarios redis-1w,redis-2p] [--json]

Every run uses fresh random keys and its own Redis key prefix, whose keys are deleted
(SCAN + UNLINK) when the scenario ends. Exit status: 0 when every scenario ran (whatever the
PASS/FAIL verdicts), 1 when a scenario failed to complete, 2 when REDIS_URL is missing.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as redis
from hostinfo import host_footer, host_info

from bot.app.runtime import Runtime
from bot.config.loader import load_config
from bot.config.settings import load_settings
from bot.core.crypto import new_key
from bot.core.envelopes import Inbound, Outbound
from bot.engine.decision import FrontDeskHandoff
from bot.messaging.delivery import ChannelAdapter
from bot.ops.logs import configure_logging

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
    # The pipeline's own cost: the NLU has its own benchmark (benchmarks/nlu_bench.py).
    return Runtime.build(config, load_settings(config, env), decision_step=FrontDeskHandoff)


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


async def delete_keys(redis_url: str, pattern: str) -> int:
    """SCAN + UNLINK every key matching `pattern` (a run's or a scenario's prefix)."""
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=1000):
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
    """Child process: what `patientbot worker` runs, plus reports to the parent."""
    quiet_logging()
    asyncio.run(_worker_process(env, index, stop, reports))


class Reporter:
    """In a worker process: batches delivery times and progress for the parent."""

    def __init__(self, index: int, reports: Any) -> None:
        self._index = index
        self._reports = reports
        self._delivered: list[tuple[str, float]] = []
        self._processed = 0

    def on_delivered(self, provider_message_id: str, at: float) -> None:
        self._delivered.append((provider_message_id, at))

    def ready(self) -> None:
        self._reports.put(("ready", self._index, None))

    def flush(self, processed: int) -> None:
        if self._delivered:
            self._reports.put(("delivered", self._index, self._delivered))
            self._delivered = []
        if processed != self._processed:  # CPU time goes with progress, so a phase's ends
            self._processed = processed     # are measured when its last turn completes
            self._reports.put(("processed", self._index, (processed, time.process_time())))


async def _worker_process(env: dict[str, str], index: int, stop: Any, reports: Any) -> None:
    runtime = build_runtime(env)
    reporter = Reporter(index, reports)
    time_deliveries(runtime, reporter.on_delivered)
    worker = runtime.new_worker()
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    reporter.ready()
    try:
        while not stop.is_set():
            await asyncio.sleep(REPORT_INTERVAL)
            reporter.flush(worker.processed)
    finally:
        stopping.set()
        await task
        reporter.flush(worker.processed)
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
    rank = math.ceil(q * len(sorted_values)) - 1
    return sorted_values[min(len(sorted_values) - 1, max(0, rank))]


async def submit(runtime: Runtime, tracker: Tracker, sender: str, text: str,
                 received_at: datetime | None = None) -> None:
    received_at = received_at or datetime.now(UTC)
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
                     datetime.fromtimestamp(scheduled, UTC))


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
            raise RuntimeError(f"stalled for {STALL_TIMEOUT:g} s at {done}/{processed_target} "
                               f"turns, {replies}/{replies_target} replies")
        await asyncio.sleep(0.005)


async def run_phase(runtime: Runtime, workers: Workers, tracker: Tracker,
                    bursts: list[list[tuple[str, str]]], *, rate: float | None) -> PhaseResult:
    """Submit `bursts` (flat out, or paced at `rate`) and wait until all are done."""
    count = sum(len(b) for b in bursts)
    before = set(tracker.received)
    processed_target = workers.processed() + count
    replies_target = len(tracker.delivered) + len(bursts)  # each sender's first message
    cpu_before = time.process_time() + workers.cpu_seconds()
    started = time.time()
    if rate is None:
        await submit_flat_out(runtime, tracker, bursts)
    else:
        await submit_paced(runtime, tracker, bursts, rate)
    submitted = time.time()
    await wait_until_done(workers, tracker, processed_target=processed_target,
                          replies_target=replies_target)
    finished = time.time()  # at most one poll interval (5 ms) late
    cpu = time.process_time() + workers.cpu_seconds() - cpu_before
    ids = set(tracker.received) - before
    if rate is not None:
        started = min(tracker.received[i] for i in ids)  # the first scheduled time
    latencies = sorted((tracker.delivered[i] - tracker.received[i]) * 1000
                       for i in ids if i in tracker.delivered)
    return summarise(count, latencies, seconds=finished - started,
                     submit_seconds=submitted - started, cpu_seconds=cpu)


def summarise(count: int, latencies: list[float], *, seconds: float, submit_seconds: float,
              cpu_seconds: float) -> PhaseResult:
    return PhaseResult(messages=count, replies=len(latencies), seconds=round(seconds, 3),
                       rate=round(count / seconds, 1), submit_seconds=round(submit_seconds, 3),
                       cpu_ms_per_message=round(cpu_seconds * 1000 / count, 3),
                       p50_ms=round(percentile(latencies, 0.50), 2),
                       p99_ms=round(percentile(latencies, 0.99), 2),
                       max_ms=round(latencies[-1] if latencies else math.nan, 2))


# --- scenarios -------------------------------------------------------------------------------

@dataclass
class ScenarioResult:
    scenario: str
    description: str
    throughput: PhaseResult | None = None
    paced: PhaseResult | None = None
    error: str | None = None

    def throughput_pass(self) -> bool | None:
        if not SCENARIOS[self.scenario].throughput_target:
            return None
        return self.throughput is not None and self.throughput.rate >= TARGET_THROUGHPUT

    def p99_pass(self) -> bool:
        return self.paced is not None and self.paced.p99_ms <= TARGET_P99_MS

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "throughput_pass": self.throughput_pass(),
                "p99_pass": self.p99_pass()}


def start_workers(scenario: Scenario, env: dict[str, str], runtime: Runtime,
                  tracker: Tracker) -> Workers:
    if scenario.worker_processes:
        return WorkerProcesses(env, scenario.worker_processes, tracker)
    return InProcessWorker(runtime, tracker)


async def measure(scenario: Scenario, args: argparse.Namespace, env: dict[str, str],
                  result: ScenarioResult) -> None:
    """Warm up, then the throughput phase, then the paced phase, filling in `result`."""
    runtime = build_runtime(env)
    tracker = Tracker()
    workers = start_workers(scenario, env, runtime, tracker)
    try:
        await workers.start()
        await run_phase(runtime, workers, tracker,
                        message_plan(WARMUP_MESSAGES, tag="warm", seed=1), rate=None)
        result.throughput = await run_phase(
            runtime, workers, tracker, message_plan(args.messages, tag="tp", seed=2), rate=None)
        result.paced = await run_phase(
            runtime, workers, tracker,
            message_plan(max(1, round(args.rate * args.duration)), tag="pace", seed=3),
            rate=args.rate)
    finally:
        await workers.stop()
        await runtime.close()


def key_prefix(run_id: str, scenario: str = "") -> str:
    return f"pbbench-{run_id}-{scenario}"


async def run_scenario(scenario: Scenario, args: argparse.Namespace, redis_url: str | None,
                       run_id: str) -> ScenarioResult:
    """One scenario under its own key prefix; a failure is reported, not raised."""
    prefix = key_prefix(run_id, scenario.name)
    env = bench_env(redis_url if scenario.redis else None, prefix)
    result = ScenarioResult(scenario.name, scenario.description)
    try:
        await measure(scenario, args, env, result)
    except Exception as err:  # keep the other scenarios' numbers
        result.error = f"{type(err).__name__}: {err}"
    finally:
        if scenario.redis and redis_url:
            await delete_keys(redis_url, f"{prefix}:*")
    return result


# --- output ----------------------------------------------------------------------------------

def verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def print_table(results: Iterable[ScenarioResult], args: argparse.Namespace,
                host: dict[str, Any]) -> None:
    paced = f"paced {args.rate:g} msg/s, {args.duration:g} s"
    flat = f"throughput, {args.messages} msgs"
    print(f"{'':<10} | {flat:<32} | {paced:<22} | targets")
    print(f"{'scenario':<10} | {'msg/s':>6} {'cpu/msg':>7} {'p50':>8} {'p99':>8} | "
          f"{'p50':>6} {'p99':>7} {'max':>7} | {'>=1000/s':>8} {'p99<=20':>8}")
    print("-" * 95)
    for r in results:
        if r.error or r.throughput is None or r.paced is None:
            print(f"{r.scenario:<10} | ERROR {r.error}")
            continue
        t, p = r.throughput, r.paced
        print(f"{r.scenario:<10} | {t.rate:>6.0f} {t.cpu_ms_per_message:>7.2f} {t.p50_ms:>8.0f} "
              f"{t.p99_ms:>8.0f} | {p.p50_ms:>6.1f} {p.p99_ms:>7.1f} {p.max_ms:>7.1f} | "
              f"{verdict(r.throughput_pass()):>8} {verdict(r.p99_pass()):>8}")
    print("Times in ms: submit (paced: scheduled time) -> reply in the patient's mailbox; under "
          "flat-out\nsubmission they are mostly queueing. msg/s and cpu/msg (client CPU: "
          "submitter + workers) count\nevery message, replied or not.")
    print(host_footer(host))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the message pipeline from ingress to delivered reply.",
        epilog="Scenarios: " + "; ".join(f"{s.name}: {s.description}"
                                         for s in SCENARIOS.values()))
    parser.add_argument("--messages", type=int, default=5000,
                        help="messages in the throughput phase (default 5000)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="offered load of the paced phase, msg/s (default 200)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="length of the paced phase, seconds (default 10)")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                        help=f"comma-separated subset of: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable results instead of the table")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--messages, --rate and --duration must be positive")
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    args.scenario_list = [SCENARIOS[n] for n in names]
    return args


async def run_all(args: argparse.Namespace, redis_url: str | None,
                  run_id: str) -> list[ScenarioResult]:
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
    run_id = uuid.uuid4().hex[:8]
    try:
        results = asyncio.run(run_all(args, redis_url, run_id))
    finally:
        if redis_url:  # again, now that leftover tasks are gone (a failed scenario's)
            asyncio.run(delete_keys(redis_url, key_prefix(run_id) + "*"))
    if args.json:
        print(json.dumps({"targets": {"throughput_msg_s": TARGET_THROUGHPUT,
                                      "p99_ms": TARGET_P99_MS, "offered_rate": args.rate},
                          "host": host, "results": [r.as_dict() for r in results]}, indent=2))
    else:
        print_table(results, args, host)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
