"""NLU benchmark: how fast the embedded NLU answers, trains and starts, and what it costs.

What is measured
    latency     `await service.parse(text)` one message at a time, warm, over --messages
                held-out and training messages (cycled when there are fewer): p50, p99, max.
    batch       `service.parse_batch` in chunks of the CLI's batch size over the same
                messages: messages/s.
    cli         `patientbot nlu parse` end to end as a subprocess on a --cli-messages line
                JSON Lines file: messages/s including start-up, and excluding it. Start-up
                (interpreter, config, model load, the language detector's lazy model
                loading) is a run on the first CLI_WARMUP lines; "excluding start-up" is the
                extra messages over the extra time. Also the subprocess's peak RSS.
    training    `train_model` on all the training data: seconds.
    memory      peak RSS of this process (resource.getrusage) while serving, i.e. before
                training, and at the end (training included); the cached model file's size.

Targets (PASS/FAIL): p99 <= 5 ms, batch >= 2,000 messages/s, training < 60 s.

Run it
    make bench-nlu
    .venv/bin/python benchmarks/nlu_bench.py [--messages 2000] [--cli-messages 5000] [--json]

The model comes from the cache under the data directory (trained first when stale). Exit
status: 0 when every measurement ran (whatever the PASS/FAIL verdicts).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hostinfo import host_footer, host_info

from bot.app.cli.nlu import PARSE_BATCH
from bot.config.loader import load_config
from nlu.embedded import ModelCache
from nlu.evaluate import heldout_examples
from nlu.service import NluService, load_training_data, model_key, train_model

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"

TARGET_P99_MS = 5.0
TARGET_BATCH_RATE = 2000.0  # messages/s
TARGET_TRAINING_S = 60.0
WARMUP_MESSAGES = 200
CLI_WARMUP = 50  # lines in the start-up run of `patientbot nlu parse`


@dataclass
class Results:
    messages: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    batch_rate: float
    cli_messages: int
    cli_startup_s: float
    cli_total_s: float
    cli_rate_with_startup: float
    cli_rate_without_startup: float
    cli_peak_rss_mb: float
    training_s: float
    training_examples: int
    serving_rss_mb: float
    peak_rss_mb: float
    model_mb: float

    def verdicts(self) -> dict[str, bool]:
        return {"p99": self.p99_ms <= TARGET_P99_MS,
                "batch": self.batch_rate >= TARGET_BATCH_RATE,
                "training": self.training_s < TARGET_TRAINING_S}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else math.nan


def bench_texts(config: Any, count: int) -> list[str]:
    """Held-out messages first, then training messages, cycled up to `count`."""
    heldout = [e.text for e in heldout_examples(config)]
    training = [e.text for e in load_training_data(config).examples]
    return list(itertools.islice(itertools.cycle(heldout + training), count))


async def single_latencies(service: NluService, texts: list[str]) -> list[float]:
    for text in texts[:WARMUP_MESSAGES]:
        await service.parse(text)
    latencies = []
    for text in texts:
        started = time.perf_counter()
        await service.parse(text)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def batch_rate(service: NluService, texts: list[str]) -> float:
    service.parse_batch(texts[:PARSE_BATCH])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(texts), PARSE_BATCH):
        service.parse_batch(texts[start:start + PARSE_BATCH])
    return len(texts) / (time.perf_counter() - started)


def patientbot_command() -> list[str]:
    script = Path(sys.executable).parent / "patientbot"
    if script.exists():
        return [str(script)]
    found = shutil.which("patientbot")
    return [found] if found else [sys.executable, "-m", "bot.app.cli"]


def run_cli(input_path: Path, config_dir: Path) -> float:
    """Wall-clock seconds of one `patientbot nlu parse` run (output discarded)."""
    command = [*patientbot_command(), "nlu", "parse", "--config", str(config_dir)]
    with input_path.open("rb") as stdin:
        started = time.perf_counter()
        subprocess.run(command, stdin=stdin, stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - started


def write_jsonl(path: Path, texts: list[str], count: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for text in itertools.islice(itertools.cycle(texts), count):
            handle.write(json.dumps({"text": text, "channel": "sms"}) + "\n")
    return path


def cli_timings(texts: list[str], count: int, config_dir: Path) -> tuple[float, float]:
    """(start-up seconds, seconds for `count` messages). Start-up is the best of two runs on
    the first CLI_WARMUP lines, after a first run that warms the file cache."""
    with tempfile.TemporaryDirectory() as directory:
        small = write_jsonl(Path(directory) / "small.jsonl", texts, CLI_WARMUP)
        full = write_jsonl(Path(directory) / "messages.jsonl", texts, count)
        run_cli(small, config_dir)
        startup = min(run_cli(small, config_dir), run_cli(small, config_dir))
        return startup, run_cli(full, config_dir)


def peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def measure(args: argparse.Namespace) -> Results:
    config = load_config(args.config)
    service = NluService.from_config(config)  # cached model, or trains it now
    texts = bench_texts(config, args.messages)
    latencies = asyncio.run(single_latencies(service, texts))
    rate = batch_rate(service, texts)
    print("[bench] patientbot nlu parse ...", file=sys.stderr, flush=True)
    startup, total = cli_timings(texts, args.cli_messages, args.config)
    serving_rss = peak_rss_mb(resource.RUSAGE_SELF)
    print("[bench] training ...", file=sys.stderr, flush=True)
    data = load_training_data(config)
    started = time.perf_counter()
    train_model(config, data)
    training = time.perf_counter() - started
    model_file = ModelCache(Path(config.app.data_dir) / "nlu").path(model_key(config))
    return Results(
        messages=len(texts), p50_ms=round(percentile(latencies, 0.5), 3),
        p99_ms=round(percentile(latencies, 0.99), 3), max_ms=round(max(latencies), 3),
        batch_rate=round(rate, 1), cli_messages=args.cli_messages,
        cli_startup_s=round(startup, 2), cli_total_s=round(total, 2),
        cli_rate_with_startup=round(args.cli_messages / total, 1),
        cli_rate_without_startup=round(
            (args.cli_messages - CLI_WARMUP) / max(total - startup, 1e-9), 1),
        cli_peak_rss_mb=round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1),
        training_s=round(training, 2), training_examples=len(data.examples),
        serving_rss_mb=round(serving_rss, 1),
        peak_rss_mb=round(peak_rss_mb(resource.RUSAGE_SELF), 1),
        model_mb=round(model_file.stat().st_size / 2**20, 2))


def verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def print_table(r: Results, host: dict[str, Any]) -> None:
    passed = r.verdicts()
    rows = [
        (f"parse() latency p50, {r.messages} msgs", f"{r.p50_ms:.2f} ms", "", None),
        ("parse() latency p99", f"{r.p99_ms:.2f} ms", f"<= {TARGET_P99_MS:g} ms", passed["p99"]),
        ("parse() latency max", f"{r.max_ms:.2f} ms", "", None),
        ("parse_batch throughput", f"{r.batch_rate:,.0f} msg/s",
         f">= {TARGET_BATCH_RATE:,.0f} msg/s", passed["batch"]),
        (f"nlu parse CLI, {r.cli_messages} lines, with start-up",
         f"{r.cli_rate_with_startup:,.0f} msg/s", "", None),
        ("nlu parse CLI, without start-up", f"{r.cli_rate_without_startup:,.0f} msg/s", "", None),
        (f"nlu parse CLI start-up ({CLI_WARMUP} lines) / total",
         f"{r.cli_startup_s:.2f} s / {r.cli_total_s:.2f} s", "", None),
        ("nlu parse CLI peak RSS", f"{r.cli_peak_rss_mb:.0f} MB", "", None),
        (f"training, {r.training_examples} examples", f"{r.training_s:.1f} s",
         f"< {TARGET_TRAINING_S:g} s", passed["training"]),
        ("peak RSS serving (this process)", f"{r.serving_rss_mb:.0f} MB", "", None),
        ("peak RSS after training", f"{r.peak_rss_mb:.0f} MB", "", None),
        ("model file", f"{r.model_mb:.1f} MB", "", None),
    ]
    print(f"{'measure':<44} | {'value':>20} | {'target':>16} | verdict")
    print("-" * 95)
    for name, value, target, ok in rows:
        print(f"{name:<44} | {value:>20} | {target:>16} | {verdict(ok)}")
    print(host_footer(host))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Measure the embedded NLU.")
    parser.add_argument("--messages", type=int, default=2000,
                        help="messages for the latency and batch measurements (default 2000)")
    parser.add_argument("--cli-messages", type=int, default=5000,
                        help="JSON Lines fed to `patientbot nlu parse` (default 5000)")
    parser.add_argument("--config", type=Path, default=CONFIG_DIR,
                        help="config directory (default: the repository's config/)")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable results instead of the table")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.cli_messages <= CLI_WARMUP:
        parser.error(f"--messages must be positive and --cli-messages above {CLI_WARMUP}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host = host_info()
    results = measure(args)
    if args.json:
        print(json.dumps({"targets": {"p99_ms": TARGET_P99_MS, "batch_msg_s": TARGET_BATCH_RATE,
                                      "training_s": TARGET_TRAINING_S},
                          "host": host, "results": asdict(results),
                          "verdicts": results.verdicts()}, indent=2))
    else:
        print_table(results, host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
