"""Every exception patientbot defines derives from PatientbotError, so that a caller can tell
ours from a library's (and none carries message text: see bot/core/errors.py)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bot", "channels", "handoff", "nlu")
BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}


def class_bases() -> dict[str, list[str]]:
    """Class name -> the names of its bases, for every class in our packages."""
    bases: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases[node.name] = [ast.unparse(base).rsplit(".", 1)[-1]
                                        for base in node.bases]
    return bases


def ancestors(name: str, bases: dict[str, list[str]]) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for base in bases.get(todo.pop(), []):
            if base not in seen:
                seen.add(base)
                todo.append(base)
    return seen


def test_every_exception_derives_from_patientbot_error() -> None:
    bases = class_bases()
    exceptions = [name for name in bases if name != "PatientbotError"
                  and ancestors(name, bases) & (BUILTIN_EXCEPTIONS | {"PatientbotError"})]
    assert len(exceptions) >= 15  # the walk found our exception classes
    strays = [name for name in exceptions if "PatientbotError" not in ancestors(name, bases)]
    assert strays == []
