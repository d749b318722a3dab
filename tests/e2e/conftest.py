"""Fixtures for the browser (end-to-end) tests.

`portal_server` runs the real app (`patientbot serve`) as a subprocess against the Redis in
REDIS_URL, under a Redis key prefix unique to this test session (removed afterwards), with
fresh random keys and a temporary working directory. `page` is a fresh Playwright page in
Debian's Chromium (never a downloaded browser) with its own storage.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CONFIG_DIR, REPO, free_port, key_env, redis_url

# The console script of the interpreter running the tests (the project's .venv under `make test`).
PATIENTBOT = next((p for p in (Path(sys.executable).parent / "patientbot",
                               REPO / ".venv" / "bin" / "patientbot") if p.exists()),
                  REPO / ".venv" / "bin" / "patientbot")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
READY_TIMEOUT = 20.0
EXPECT_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class PortalServer:
    base_url: str
    redis_url: str
    redis_prefix: str

    def url(self, path: str) -> str:
        return self.base_url + path


def _tail(path: Path, limit: int = 8000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output captured)"
    return text[-limit:] or "(empty)"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


@contextmanager
def running_server(workdir: Path, prefix_name: str, *, decision_step: str | None = None,
                   ready_timeout: float = READY_TIMEOUT) -> Iterator[PortalServer]:
    """`patientbot serve` on a free port with fresh keys, under its own Redis key prefix
    (deleted afterwards), working in `workdir` (so .data/ never lands in the repo).
    `decision_step`: module:factory (default: the real engine)."""
    url = redis_url()
    prefix = f"pbtest-{prefix_name}-{secrets.token_hex(6)}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATIENTBOT_")}
    env.update({"REDIS_URL": url, "PATIENTBOT_REDIS_PREFIX": prefix, **key_env(),
                "PYTHONUNBUFFERED": "1"})
    stdout_path, stderr_path = workdir / "server.stdout", workdir / "server.stderr"
    command = [str(PATIENTBOT), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--config", str(CONFIG_DIR)]
    if decision_step:
        command += ["--decision-step", decision_step]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
    server = PortalServer(base_url=f"http://127.0.0.1:{port}", redis_url=url,
                          redis_prefix=prefix)
    try:
        deadline = time.monotonic() + ready_timeout
        while not _ready(server.url("/readyz")):
            if proc.poll() is not None:
                pytest.fail(f"`patientbot serve` exited with code {proc.returncode} before it "
                            f"was ready.\nstderr:\n{_tail(stderr_path)}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"`patientbot serve` was not ready ({server.url('/readyz')}) within "
                            f"{ready_timeout:.0f} s.\nstderr:\n{_tail(stderr_path)}",
                            pytrace=False)
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        _delete_prefix(url, prefix)


@pytest.fixture(scope="session")
def portal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortalServer]:
    """The real app for the portal tests. Portal mechanics with the fixed front-desk step
    (its reply is predictable); the engine is tested in test_engine_pipeline.py."""
    with running_server(tmp_path_factory.mktemp("portal-server"), "e2e",
                        decision_step="bot.engine.decision:FrontDeskHandoff") as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # Imported here so that collecting the rest of the suite does not need Playwright.
    from playwright.sync_api import expect, sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (`make test` does).",
                    pytrace=False)
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, portal_server: PortalServer) -> Iterator[object]:  # noqa: ANN001
    """A fresh page (own cookies and sessionStorage). Dialogs are recorded in `page.dialogs`
    and dismissed; tests assert that list stays empty."""
    context = browser.new_context(base_url=portal_server.base_url, locale="en-US",
                                  timezone_id="America/New_York",
                                  viewport={"width": 1024, "height": 800})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog) -> None:  # noqa: ANN001
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.dialogs = dialogs  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()
