"""`patientbot simulate` and `patientbot readiness`: prove the workflow before launch."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from bot.config.loader import Config, load_config
from bot.config.settings import load_settings
from bot.ops.logs import configure_logging


def _quiet_config(args: argparse.Namespace, level: int) -> Config:
    """These commands print reports on stdout; logs go to stderr, and only problems."""
    config = load_config(args.config)
    configure_logging(production=config.app.environment == "production", level=level)
    return config


def cmd_simulate(args: argparse.Namespace) -> int:
    from bot.app.simulate import format_report, load_scenario

    config = _quiet_config(args, logging.WARNING)
    scenario = load_scenario(args.scenario)
    report = asyncio.run(_simulate_isolated(scenario, config))
    print(report.to_json() if args.json else format_report(report))
    if report.failures:
        print(f"patientbot: {len(report.failures)} expectation(s) failed", file=sys.stderr)
        return 1
    return 0


async def _simulate_isolated(scenario, config: Config):  # noqa: ANN001, ANN202
    """With REDIS_URL, a simulation runs in Redis under its own key prefix, removed
    afterwards: simulated bookings never take a real patient's time."""
    import dataclasses
    import uuid

    import redis.asyncio as redis

    from bot.app.simulate import simulate

    settings = load_settings(config)
    if not settings.redis_url:
        return await simulate(scenario, config, settings)
    prefix = f"{settings.redis_prefix}-simulate-{uuid.uuid4().hex[:12]}"
    try:
        return await simulate(scenario, config,
                              dataclasses.replace(settings, redis_prefix=prefix))
    finally:
        client = redis.Redis.from_url(settings.redis_url)
        try:
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                await client.unlink(key)
        finally:
            await client.aclose()


def add_engine_commands(commands: argparse._SubParsersAction,
                        with_config: Callable[[argparse.ArgumentParser],
                                              argparse.ArgumentParser]) -> None:
    simulate = with_config(commands.add_parser(
        "simulate", help="run a scripted conversation through the real pipeline"))
    simulate.add_argument("scenario", type=Path, help="scenario YAML (see examples/scenarios)")
    simulate.add_argument("--json", action="store_true", help="machine-readable output")
    simulate.set_defaults(handler=cmd_simulate)
    readiness = with_config(commands.add_parser(
        "readiness", help="pre-launch check: common requests through the real pipeline"))
    readiness.set_defaults(handler=cmd_readiness)


def cmd_readiness(args: argparse.Namespace) -> int:
    from bot.app.readiness import format_table, run_readiness
    from bot.core.envelopes import utcnow

    # Readiness always runs in a private in-memory store: its storage warning is expected.
    config = _quiet_config(args, logging.ERROR)
    results = asyncio.run(run_readiness(config, now=utcnow()))
    print(format_table(config, results))
    failed = [result.case.name for result in results if not result.ok]
    if failed:
        print(f"patientbot: readiness FAILED for: {'; '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\nreadiness OK: {len(results)} cases")
    return 0
