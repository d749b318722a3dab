"""`patientbot desk hash-password` and `patientbot desk token ACCOUNT_ID`: web agent desk
accounts (config/agents.yml) and their sign-in links."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

from bot.config.loader import load_config
from bot.config.settings import DEMO_DESK_PASSWORD, load_settings

EXIT_USAGE = 2
MIN_PASSWORD_CHARS = 12


def _read_password() -> str | None:
    """Twice from the terminal (not echoed), or one line from stdin when piped."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New desk password: ")
    if getpass.getpass("Repeat it: ") != first:
        print("patientbot: the passwords differ", file=sys.stderr)
        return None
    return first


def cmd_hash_password(args: argparse.Namespace) -> int:
    from argon2 import PasswordHasher

    password = _read_password()
    if password is None:
        return EXIT_USAGE
    if len(password) < MIN_PASSWORD_CHARS:
        print(f"patientbot: use at least {MIN_PASSWORD_CHARS} characters", file=sys.stderr)
        return EXIT_USAGE
    if password == DEMO_DESK_PASSWORD:
        print("patientbot: that is the published demo password", file=sys.stderr)
        return EXIT_USAGE
    print(PasswordHasher().hash(password))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from handoff.web.auth import desk_secret, sign_in_token

    config = load_config(args.config)
    desk = config.agents.desk
    if desk.account(args.account) is None:
        print(f"patientbot: no desk account {args.account!r} in agents.yml", file=sys.stderr)
        return EXIT_USAGE
    if not desk.enabled:
        print("patientbot: the web agent desk is disabled in agents.yml", file=sys.stderr)
        return EXIT_USAGE
    # The same key material as the server (environment, or the development keys in
    # data_dir), so that the server accepts the link.
    secret = desk_secret(load_settings(config).keys)
    token = sign_in_token(secret, args.account)
    print(f"{config.app.public_base_url.rstrip('/')}/agent/token?t={token}")
    print(f"valid for {desk.token_minutes} minutes, for one sign-in", file=sys.stderr)
    return 0


def add_desk_commands(commands: argparse._SubParsersAction,
                      with_config: Callable[[argparse.ArgumentParser],
                                            argparse.ArgumentParser]) -> None:
    desk = commands.add_parser("desk", help="web agent desk accounts")
    desk_commands = desk.add_subparsers(dest="desk_command", required=True)
    hash_password = desk_commands.add_parser(
        "hash-password", help="print the argon2 hash of a password for agents.yml")
    hash_password.set_defaults(handler=cmd_hash_password)
    token = with_config(desk_commands.add_parser(
        "token", help="print a single-use sign-in link for a desk account"))
    token.add_argument("account", help="the account id in agents.yml")
    token.set_defaults(handler=cmd_token)
