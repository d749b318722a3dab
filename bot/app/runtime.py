"""Wiring: config + environment -> store, ingress, pipeline, outbox, channels, workers.

Both `patientbot serve` and `patientbot worker` build a Runtime; tests build one directly.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import redis.asyncio as redis
import structlog

from bot.config.loader import Config
from bot.config.settings import Settings
from bot.core.envelopes import utcnow
from bot.engine.decision import DecisionStep
from bot.engine.identity import EncryptedPatientDirectory, PatientDirectory
from bot.messaging.delivery import ChannelRegistry, phi_gate
from bot.messaging.intake import Intake
from bot.messaging.outbox import OutboxDispatcher
from bot.messaging.pipeline import Pipeline
from bot.messaging.worker import Sweeper, Worker
from bot.ops import metrics
from bot.store import Store
from bot.store.audit import AuditChain, AuditLog, MemoryAuditLog, RedisAuditLog
from bot.store.ingress import Ingress, IngressQueue, MemoryIngressQueue, RedisIngressQueue
from bot.store.memory import MemoryStore
from bot.store.redis import RedisStore
from channels.base import PatientChannel
from channels.portal.adapter import PortalAdapter
from channels.registry import enabled_channels
from handoff.desk import AgentDesk
from handoff.escalation import EscalationNotifier, EscalationSweeper

if TYPE_CHECKING:
    from handoff.slack.agents import SlackAgents
    from handoff.web.desk import WebDesk

log = structlog.get_logger("patientbot.runtime")

HOUR = 3600.0
DecisionFactory = Callable[[Config], DecisionStep]


def load_decision_step(spec: str | None) -> DecisionFactory | None:
    """`module:attribute` naming a factory taking the Config (default, None: the engine)."""
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def redis_client(url: str, config: Config) -> redis.Redis:
    """One pool for the web app and the in-process workers.

    The pool blocks when every connection is busy instead of failing (redis-py's default
    pool raises), and is sized for the workers' concurrency. There is no per-command socket
    timeout: a per-command timer costs more than the command itself. Deadlines are set per
    message, per send and per request instead (pipeline, outbox, worker, web app).
    """
    workers = config.app.workers
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max(1, workers.in_process) * workers.concurrency + 32,
        timeout=workers.lock_ttl_seconds, socket_timeout=None, socket_connect_timeout=5)
    return redis.Redis.from_pool(pool)


@dataclass
class Backends:
    """What a process shares with the others: the store, the ingress queue, the audit log
    (Redis, or in memory for a single-process demo). Ops commands need only these, so they
    never build the engine or load the NLU model."""

    store: Store
    queue: IngressQueue
    audit: AuditLog
    redis: redis.Redis | None = None

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def build_backends(config: Config, settings: Settings) -> Backends:
    keys = settings.keys
    limits = config.app.limits
    store_options = {"dedupe_ttl": limits.dedupe_ttl_hours * HOUR,
                     "retention": limits.retention_days * 24 * HOUR}
    chain = AuditChain(keys.hasher.derive_key("audit-mac-v1"))
    if settings.redis_url:
        client = redis_client(settings.redis_url, config)
        return Backends(
            store=RedisStore(client, keys.sealer, keys.hasher, prefix=settings.redis_prefix,
                             **store_options),
            queue=RedisIngressQueue(client, prefix=settings.redis_prefix,
                                    retention=store_options["retention"]),
            audit=RedisAuditLog(client, chain, prefix=settings.redis_prefix),
            redis=client)
    log.warning("REDIS_URL is not set: using in-memory storage; NOTHING PERSISTS "
                "across restarts and `patientbot worker` cannot join")
    return Backends(store=MemoryStore(keys.sealer, keys.hasher, **store_options),
                    queue=MemoryIngressQueue(), audit=MemoryAuditLog(chain))


@dataclass
class Runtime:
    config: Config
    settings: Settings
    store: Store
    ingress: Ingress
    pipeline: Pipeline
    dispatcher: OutboxDispatcher
    channels: ChannelRegistry
    directory: PatientDirectory
    audit: AuditLog
    decision_step: DecisionStep
    intake: Intake
    patient_channels: list[PatientChannel] = field(default_factory=list)
    # Agent desk and escalation timers (handoff/): the agent interfaces drive `desk`; set
    # `escalations.notifier` to deliver escalation notices (the default only records).
    desk: AgentDesk | None = None
    escalations: EscalationSweeper | None = None
    # Agent interfaces (agents.yml): Slack (optional) and the web agent desk at /agent/.
    slack: SlackAgents | None = None
    web_desk: WebDesk | None = None
    _redis: redis.Redis | None = None
    _worker_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(cls, config: Config, settings: Settings, *,
              decision_step: DecisionFactory | None = None,
              clock: Callable[[], datetime] = utcnow) -> Runtime:
        keys = settings.keys
        backends = build_backends(config, settings)
        store, queue, audit, client = backends.store, backends.queue, backends.audit, \
            backends.redis
        if keys.generated_dev_keys:
            log.warning("PATIENTBOT_DATA_KEYS is not set: using DEVELOPMENT keys from "
                        f"{config.app.data_dir}/ - never use these with real patient data")
        ingress = Ingress(queue, keys.sealer, keys.hasher)
        channels = ChannelRegistry()
        channels.register(PortalAdapter(store))
        intake = Intake(ingress=ingress, store=store, hasher=keys.hasher,
                        limits=config.channels.limits)
        patient_channels = enabled_channels(config, intake=intake, store=store,
                                            hasher=keys.hasher, secrets=settings.secrets)
        for channel in patient_channels:
            channels.register(channel)
        for name in channels.names():
            metrics.show_channel(name)
        lease = config.app.workers.lock_ttl_seconds
        dispatcher = OutboxDispatcher(store, channels, audit, phi_gate=phi_gate(config),
                                      lease_seconds=lease)
        if decision_step is None:
            from bot.engine.engine import Engine

            step: DecisionStep = Engine.build(config, store=store, keys=keys)
        else:
            step = decision_step(config)
        desk = AgentDesk(config, store, audit, dispatcher=dispatcher, clock=clock)
        escalations = EscalationSweeper(config, store, audit, clock=clock)
        slack = None
        notifiers: list[EscalationNotifier] = []
        if config.agents.slack.enabled:
            from handoff.slack.agents import SlackAgents

            slack = SlackAgents(config, desk=desk, store=store, audit=audit,
                                secrets=settings.secrets, clock=clock)
            notifiers.append(slack.notifier)
        if config.agents.email_notices.enabled:
            from handoff.email_notices import EmailNotifier

            notifiers.append(EmailNotifier(config, secrets=settings.secrets, clock=clock))
        if len(notifiers) > 1:
            from handoff.email_notices import FanOutNotifier

            escalations.notifier = FanOutNotifier(*notifiers)
        elif notifiers:
            escalations.notifier = notifiers[0]
        # else: the default notifier, which only records
        web_desk = None
        if config.agents.desk.enabled:
            from handoff.web.auth import desk_secret
            from handoff.web.desk import WebDesk

            web_desk = WebDesk(config, desk=desk, store=store, audit=audit,
                               secret=desk_secret(keys), clock=clock)
        return cls(
            config=config,
            settings=settings,
            store=store,
            ingress=ingress,
            pipeline=Pipeline(config=config, store=store, ingress=ingress, audit=audit,
                              decision_step=step, clock=clock),
            dispatcher=dispatcher,
            channels=channels,
            directory=EncryptedPatientDirectory(config.patients, keys.sealer, keys.hasher),
            audit=audit,
            decision_step=step,
            intake=intake,
            patient_channels=patient_channels,
            desk=desk,
            escalations=escalations,
            slack=slack,
            web_desk=web_desk,
            _redis=client,
        )

    def new_worker(self, name: str | None = None, *,
                   reclaim_idle: float | None = None) -> Worker:
        workers = self.config.app.workers
        return Worker(ingress=self.ingress, pipeline=self.pipeline, dispatcher=self.dispatcher,
                      name=name, concurrency=workers.concurrency,
                      reclaim_idle=reclaim_idle or workers.reclaim_idle_seconds,
                      max_deliveries=workers.max_deliveries, sweepers=self.sweepers)

    @property
    def sweepers(self) -> list[Sweeper]:
        """The periodic work each worker runs besides messages and the outbox."""
        return [sweeper for sweeper in (self.escalations, self.slack) if sweeper is not None]

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            self._worker_tasks.append(asyncio.create_task(self.new_worker().run(self._stop)))

    @property
    def workers_running(self) -> int:
        return sum(1 for task in self._worker_tasks if not task.done())

    async def close(self) -> None:
        self._stop.set()
        if self._worker_tasks:
            await asyncio.gather(*self._worker_tasks, return_exceptions=True)
        # After the workers: a reply being sent still has its provider client. Whatever a
        # listener accepts meanwhile is already durably queued.
        if self.slack is not None:
            await self.slack.stop()  # its background actions may still send replies
        for channel in self.patient_channels:
            await channel.stop()  # idempotent: listeners and provider clients
        if self._redis is not None:
            await self._redis.aclose()
