"""The `patientbot` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bot.app.cli.desk import add_desk_commands
from bot.app.cli.engine import add_engine_commands
from bot.app.cli.nlu import add_nlu_commands
from bot.config.loader import DEFAULT_CONFIG_DIR, Config, load_config
from bot.config.settings import Settings, load_settings
from bot.core.errors import ConfigError, SecretsError
from bot.ops.logs import configure_logging

if TYPE_CHECKING:
    from bot.app.runtime import Backends

EXIT_CONFIG = 2


def _default_config_dir() -> Path:
    if os.environ.get("PATIENTBOT_CONFIG"):
        return Path(os.environ["PATIENTBOT_CONFIG"])
    local = Path("config")
    return local if (local / "app.yml").exists() else DEFAULT_CONFIG_DIR


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    configure_logging(production=config.app.environment == "production")
    return config


def _runtime(args: argparse.Namespace):  # noqa: ANN202 - imported lazily to keep `config check` light
    from bot.app.runtime import Runtime, load_decision_step

    config = _load(args)
    if args.decision_step and config.app.environment == "production":
        # A test double replacing the engine must never answer real patients.
        raise ConfigError("app.yml", "environment", "production refuses --decision-step / "
                          "PATIENTBOT_DECISION_STEP (replacing the engine is for tests and "
                          "drills only)")
    return Runtime.build(config, load_settings(config),
                         decision_step=load_decision_step(args.decision_step))


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(config.summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bot.app.web import create_app

    async def main() -> None:
        runtime = _runtime(args)
        app = create_app(runtime, workers=args.workers)
        server = uvicorn.Server(uvicorn.Config(
            app, host=args.host, port=args.port, log_config=None, access_log=False,
            proxy_headers=True, timeout_graceful_shutdown=5, lifespan="on"))
        await server.serve()

    asyncio.run(main())
    return 0


def _require_shared_storage(settings: Settings, command: str) -> None:
    if not settings.persistent:
        raise SecretsError(f"`patientbot {command}` needs REDIS_URL: in-memory storage "
                           "cannot be shared between processes")


def _shared_runtime(args: argparse.Namespace, command: str):  # noqa: ANN202
    runtime = _runtime(args)
    _require_shared_storage(runtime.settings, command)
    return runtime


def cmd_worker(args: argparse.Namespace) -> int:
    async def main() -> None:
        runtime = _shared_runtime(args, "worker")
        if args.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(args.metrics_port, addr="127.0.0.1")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await runtime.new_worker().run(stop)
        finally:
            await runtime.close()

    asyncio.run(main())
    return 0


def _run_operation(args: argparse.Namespace, command: str, operation) -> int:  # noqa: ANN001
    """Run `await operation(backends)` (returning the exit code) on the shared Redis storage
    alone: no engine, no NLU model, no channels."""
    from bot.app.runtime import build_backends

    async def main() -> int:
        config = _load(args)
        settings = load_settings(config)
        _require_shared_storage(settings, command)
        backends = build_backends(config, settings)
        try:
            return await operation(backends)
        finally:
            await backends.close()

    return asyncio.run(main())


def cmd_dead_letters(args: argparse.Namespace) -> int:
    async def operation(backends: Backends) -> int:
        queue = backends.queue
        if args.requeue:
            print(f"requeued {await queue.requeue_dead_letters()} dead-letter entries")
        else:
            print(f"{await queue.dead_letters()} dead-letter entries "
                  f"({await queue.pending()} pending in the ingress queue)")
        return 0

    return _run_operation(args, "ingress dead-letters", operation)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    async def operation(backends: Backends) -> int:
        check = await backends.audit.verify()
        if not check.ok:
            print(f"audit log BROKEN: {check.problem}", file=sys.stderr)
            return 1
        # The head is what to record elsewhere: it proves later that nothing was cut off.
        print(f"audit log OK: {check.entries} entries; head {check.head_seq} {check.head_mac}")
        return 0

    return _run_operation(args, "audit verify", operation)


def cmd_keys_new(args: argparse.Namespace) -> int:
    from datetime import date

    from bot.core.crypto import new_key

    print(f"PATIENTBOT_DATA_KEYS={date.today():%Y%m%d}:{new_key()}")
    print(f"PATIENTBOT_LOOKUP_KEY={new_key()}")
    print(f"PATIENTBOT_SESSION_SECRET={new_key()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patientbot",
                                     description="Patient-support bot with human handoff")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=_default_config_dir(),
                       help="directory of the YAML config (default: ./config)")
        return p

    def with_decision_step(p: argparse.ArgumentParser) -> None:
        p.add_argument("--decision-step", default=os.environ.get("PATIENTBOT_DECISION_STEP"),
                       help="module:factory replacing the conversation engine, for tests "
                            "and drills (default: the engine; refused in production)")

    serve = with_config(commands.add_parser("serve", help="run the web app and workers"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=None,
                       help="in-process workers (default: config workers.in_process)")
    with_decision_step(serve)
    serve.set_defaults(handler=cmd_serve)

    worker = with_config(commands.add_parser("worker", help="run one more worker process"))
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve this worker's /metrics on 127.0.0.1:PORT")
    with_decision_step(worker)
    worker.set_defaults(handler=cmd_worker)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = with_config(config_commands.add_parser("check", help="validate config/ and summarise"))
    check.set_defaults(handler=cmd_config_check)

    ingress = commands.add_parser("ingress", help="the ingress queue")
    ingress_commands = ingress.add_subparsers(dest="ingress_command", required=True)
    dead = with_config(ingress_commands.add_parser(
        "dead-letters", help="count entries set aside; --requeue puts them back"))
    dead.add_argument("--requeue", action="store_true",
                      help="requeue every dead-letter entry (after fixing the cause)")
    dead.set_defaults(handler=cmd_dead_letters, decision_step=None)

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = with_config(audit_commands.add_parser(
        "verify", help="check the audit chain; prints the head to record elsewhere"))
    verify.set_defaults(handler=cmd_audit_verify, decision_step=None)

    add_nlu_commands(commands, with_config)
    add_engine_commands(commands, with_config)
    add_desk_commands(commands, with_config)

    keys = commands.add_parser("keys", help="key management")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_commands.add_parser("new", help="print fresh secrets for .env").set_defaults(
        handler=cmd_keys_new)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"patientbot: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except SecretsError as err:
        print(f"patientbot: environment error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
