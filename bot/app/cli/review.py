"""`patientbot nlu review`: messages agents relabelled, exported as Rasa training data.

Agents relabel a handoff's contact reason when the bot got it wrong (the desk's `relabel`).
Admins list the queue here, export the examples they accept as Rasa NLU YAML to merge into
`nlu/data/`, and remove what they have dealt with. Reading the queue shows patient words:
every listing and export is audited.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import yaml

from bot.config.loader import load_config
from bot.config.settings import load_settings
from bot.engine.notes import summary_request
from bot.store.base import ReviewItem

EXIT_USAGE = 2


class _Block(str):
    """A string written as a YAML literal block (Rasa's `examples: |`)."""


class _RasaDumper(yaml.SafeDumper):
    pass


_RasaDumper.add_representer(
    _Block, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                                          style="|"))


def rasa_yaml(items: list[ReviewItem]) -> str:
    """Rasa 3 NLU YAML: one block per corrected intent, the patient's request as example."""
    by_intent: dict[str, list[str]] = {}
    for item in items:
        text = " ".join(summary_request(str(item.record.get("text", ""))).split())
        if text:
            by_intent.setdefault(str(item.record["corrected_intent"]), []).append(text)
    nlu = [{"intent": intent, "examples": _Block("".join(f"- {text}\n" for text in texts))}
           for intent, texts in sorted(by_intent.items())]
    return yaml.dump({"version": "3.1", "nlu": nlu}, Dumper=_RasaDumper, allow_unicode=True,
                     sort_keys=False)


def _row(number: int, item: ReviewItem) -> str:
    record: dict[str, Any] = item.record
    text = " ".join(summary_request(str(record.get("text", ""))).split())
    return (f"{number:>3}  {item.item_id}  {record.get('at', '')[:16]}  "
            f"{record.get('original_intent')} -> {record.get('corrected_intent')}  "
            f"[{record.get('language', '?')}, {record.get('channel', '?')}, "
            f"{record.get('agent', '?')}]\n     {text[:160]}")


async def _review(args: argparse.Namespace) -> int:
    import redis.asyncio as redis

    from bot.store.audit import AuditChain, AuditEvent, RedisAuditLog
    from bot.store.redis import RedisStore
    from handoff.desk import RELABEL_QUEUE

    config = load_config(args.config)
    settings = load_settings(config)
    if not settings.redis_url:
        print("patientbot: nlu review reads the relabel queue in Redis: set REDIS_URL",
              file=sys.stderr)
        return EXIT_USAGE
    keys = settings.keys
    client = redis.Redis.from_url(settings.redis_url)
    try:
        store = RedisStore(client, keys.sealer, keys.hasher, prefix=settings.redis_prefix)
        audit = RedisAuditLog(client, AuditChain(keys.hasher.derive_key("audit-mac-v1")),
                              prefix=settings.redis_prefix)
        items = await store.review_items(RELABEL_QUEUE)
        if args.only:
            wanted = {part.strip() for part in args.only.split(",") if part.strip()}
            items = [item for item in items if item.item_id in wanted]
        action = "review.exported" if args.export else "review.read"
        await audit.record(AuditEvent(action, "admin", "", f"relabel:{len(items)}"))
        if args.export:
            args.export.write_text(rasa_yaml(items), encoding="utf-8")
            print(f"exported {len(items)} examples to {args.export}")
        else:
            print(f"{len(items)} relabelled messages waiting for review")
            for number, item in enumerate(items, 1):
                print(_row(number, item))
        if args.remove:
            for item in items:
                await store.review_remove(RELABEL_QUEUE, item.item_id)
            print(f"removed {len(items)} from the review queue")
    finally:
        await client.aclose()
    return 0


def cmd_nlu_review(args: argparse.Namespace) -> int:
    return asyncio.run(_review(args))


def add_review_command(nlu_commands: Any, with_config: Any) -> None:
    review = with_config(nlu_commands.add_parser(
        "review", help="messages agents relabelled: list, export as Rasa YAML, remove"))
    review.add_argument("--export", type=Path, default=None,
                        help="write the (selected) items as Rasa NLU YAML to this file")
    review.add_argument("--only", default="",
                        help="comma-separated item ids (ticket ids) to export or remove")
    review.add_argument("--remove", action="store_true",
                        help="remove the listed or exported items from the queue")
    review.set_defaults(handler=cmd_nlu_review)
