"""`patientbot nlu ...`: the admin tools for the NLU (parse, train, test, check)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from bot.app.cli.review import add_review_command
from bot.config.loader import Config, load_config

PARSE_BATCH = 1000  # lines classified together (vectorised); output order is kept


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _read_requests(stream: TextIO) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text or None, error or None) for each non-blank input line."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            yield number, None, "invalid JSON"
            continue
        if not isinstance(request, dict) or not isinstance(request.get("text"), str):
            yield number, None, 'expected an object with a "text" string'
            continue
        yield number, request["text"], None


def cmd_nlu_parse(args: argparse.Namespace) -> int:
    from nlu.service import NluService

    service = NluService.from_config(_config(args))
    out = sys.stdout
    failed = 0
    batch: list[tuple[int, str | None, str | None]] = []

    def flush() -> None:
        texts = [text for _, text, _ in batch if text is not None]
        results = iter(service.parse_batch(texts))
        for number, text, error in batch:
            if text is None:
                out.write(json.dumps({"error": f"line {number}: {error}"}) + "\n")
            else:
                out.write(json.dumps(next(results).contract(), ensure_ascii=False) + "\n")
        batch.clear()

    for request in _read_requests(sys.stdin):
        failed += request[2] is not None
        batch.append(request)
        if len(batch) >= PARSE_BATCH:
            flush()
    flush()
    out.flush()
    if failed:
        print(f"patientbot: {failed} input line(s) were not valid requests", file=sys.stderr)
    return 1 if failed else 0


def cmd_nlu_train(args: argparse.Namespace) -> int:
    from nlu.embedded import ModelCache
    from nlu.service import load_training_data, train_model

    config = _config(args)
    started = time.perf_counter()
    data = load_training_data(config)
    model = train_model(config, data)
    path = ModelCache(Path(config.app.data_dir) / "nlu").save(model)
    print(f"trained on {len(data.examples)} examples, {len(data.intents)} intents in "
          f"{time.perf_counter() - started:.1f} s -> {path}")
    return 0


def cmd_nlu_test(args: argparse.Namespace) -> int:
    from nlu.evaluate import run_evaluation

    return run_evaluation(_config(args), folds=args.folds, out_dir=args.out)


def cmd_nlu_check(args: argparse.Namespace) -> int:
    from nlu.lint import run_checks

    return run_checks(_config(args), folds=args.folds)


def add_nlu_commands(commands: Any,
                     with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
                     ) -> None:
    nlu = commands.add_parser("nlu", help="intent and safety models: parse, train, test, check")
    nlu_commands = nlu.add_subparsers(dest="nlu_command", required=True)
    with_config(nlu_commands.add_parser(
        "parse", help="JSON Lines in ({\"text\": ...}), one verdict per line out, in order")
    ).set_defaults(handler=cmd_nlu_parse)
    with_config(nlu_commands.add_parser(
        "train", help="train the embedded model from the training data")
    ).set_defaults(handler=cmd_nlu_train)
    test = with_config(nlu_commands.add_parser(
        "test", help="cross-validation and held-out report (HTML, PNG confusion matrix)"))
    test.add_argument("--folds", type=int, default=5)
    test.add_argument("--out", type=Path, default=Path("reports/nlu"),
                      help="directory for report.html, confusion.png and results.json")
    test.set_defaults(handler=cmd_nlu_test)
    check = with_config(nlu_commands.add_parser(
        "check", help="training-data lint: duplicates, thin intents, examples CV puts elsewhere"))
    check.add_argument("--folds", type=int, default=5)
    check.set_defaults(handler=cmd_nlu_check)
    add_review_command(nlu_commands, with_config)
