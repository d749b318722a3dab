"""Operator configuration: config/*.yml validated into typed models at start-up.

Every problem becomes one `ConfigError` naming the file, the key path and the problem. Secrets
never live here (see `bot.config.settings`); unknown keys are refused so a misplaced secret or a
typo cannot pass silently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from bot.config.agents import AgentsFile
from bot.config.app import AppConfig
from bot.config.channels import ChannelsFile
from bot.config.coverage import CoverageFile
from bot.config.intents import IntentConfig, IntentsFile
from bot.config.knowledge import KnowledgeFile
from bot.config.messages import MessagesFile, Templates
from bot.config.patients import PatientRecord, PatientsFile
from bot.config.policy import PolicyFile
from bot.config.queues import EscalationConfig, QueueConfig, QueuesFile
from bot.config.scheduling import SchedulingFile
from bot.config.scripts import Script
from bot.core.errors import ConfigError
from bot.core.models import ConfigModel
from nlu.config import NluConfig, SafetyLexicon, check_patterns

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


class Config(ConfigModel):
    directory: str
    app: AppConfig
    queues: dict[str, QueueConfig]
    intents: dict[str, IntentConfig]
    messages: dict[str, Templates]
    patients: list[PatientRecord]
    nlu: NluConfig = NluConfig()
    safety: SafetyLexicon | None = None
    coverage: CoverageFile
    policy: PolicyFile = PolicyFile()
    scheduling: SchedulingFile
    knowledge: KnowledgeFile
    scripts: dict[str, Script] = {}
    channels: ChannelsFile = ChannelsFile()
    agents: AgentsFile = AgentsFile()
    escalation: EscalationConfig = EscalationConfig()

    @property
    def project_root(self) -> Path:
        return Path(self.directory).resolve().parent

    def lane_of(self, intent: str) -> str | None:
        spec = self.intents.get(intent)
        return spec.lane if spec else None

    def text(self, name: str, language: str | None = None) -> str:
        """A patient-facing template in `language`, falling back to the default language."""
        templates = self.messages.get(language or "") or self.messages[self.app.default_language]
        return getattr(templates, name)

    def summary(self) -> str:
        return (
            f"config OK ({self.directory}): organisation {self.app.organisation!r}, "
            f"environment {self.app.environment}, time zone {self.app.timezone}, "
            f"{len(self.queues)} queues, {len(self.intents)} intents, "
            f"languages {', '.join(sorted(self.messages))}, "
            f"{len(self.scripts)} approved scripts, {len(self.knowledge.knowledge)} knowledge "
            f"answers, {len(self.scheduling.visit_types)} visit types, "
            f"{len(self.scheduling.providers)} calendars, "
            f"{len(self.patients)} sample patients"
        )


# file name -> (model, required)
_FILES: dict[str, tuple[type[ConfigModel], bool]] = {
    "app.yml": (AppConfig, True),
    "queues.yml": (QueuesFile, True),
    "intents.yml": (IntentsFile, True),
    "messages.yml": (MessagesFile, True),
    "patients.yml": (PatientsFile, False),
    "nlu.yml": (NluConfig, False),
    "safety.yml": (SafetyLexicon, True),
    "coverage.yml": (CoverageFile, True),
    "policy.yml": (PolicyFile, False),
    "scheduling.yml": (SchedulingFile, True),
    "knowledge.yml": (KnowledgeFile, True),
    "channels.yml": (ChannelsFile, False),
    "agents.yml": (AgentsFile, False),
}


SCRIPTS_DIR = "scripts"


# libyaml's parser where PyYAML was built with it (several times faster: the safety lexicon
# alone took a quarter of a second to parse in pure Python); the same safe constructor.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[misc, valid-type]
    """Safe YAML without implicit timestamps: dates stay strings so that pydantic validates
    them and an impossible date is reported with its key path. Booleans are only true/false
    (YAML 1.2): in YAML 1.1 a lexicon word such as `no` or `on` would silently become a
    boolean."""


_BOOL = "tag:yaml.org,2002:bool"


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:timestamp", _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(unknown place)"
        raise ConfigError(path.name, where, f"YAML syntax error: {err.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(path.name, "", "YAML syntax error") from None
    except UnicodeDecodeError:
        raise ConfigError(path.name, "", "not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path.name, "(top level)", "expected a mapping of keys")
    return data


def _validate(name: str, model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        problem = first["msg"]
        if first["type"] == "extra_forbidden":
            problem = "unknown key"
        raise ConfigError(name, _key_path(first["loc"]), problem) from None


def load_config(directory: Path | str | None = None) -> Config:
    """Load and cross-check every config file; raise `ConfigError` on the first problem."""
    root = Path(directory) if directory else DEFAULT_CONFIG_DIR
    if not root.is_dir():
        raise ConfigError(str(root), "", "config directory not found")
    for path in sorted(root.glob("*.y*ml")):
        if path.name not in _FILES:
            raise ConfigError(path.name, "", f"unknown config file (expected one of: "
                              f"{', '.join(_FILES)})")
    loaded: dict[str, Any] = {}
    for name, (model, required) in _FILES.items():
        path = root / name
        if not path.exists():
            if required:
                raise ConfigError(name, "", "required file is missing")
            loaded[name] = model.model_validate({})
            continue
        loaded[name] = _validate(name, model, _read_yaml(path))

    app: AppConfig = loaded["app.yml"]
    queues = loaded["queues.yml"].queues
    intents = loaded["intents.yml"].intents
    if "front_desk" not in queues:
        raise ConfigError("queues.yml", "queues.front_desk",
                          "the front_desk queue is required (every fallback handoff goes there)")
    for intent, spec in intents.items():
        if spec.lane is not None and spec.lane not in queues:
            raise ConfigError("intents.yml", f"intents.{intent}.lane",
                              f"unknown queue {spec.lane!r} (not in queues.yml)")
    messages = loaded["messages.yml"].messages
    if app.default_language not in messages:
        raise ConfigError("messages.yml", f"messages.{app.default_language}",
                          "the default language from app.yml has no messages")
    patients = loaded["patients.yml"].patients
    seen: set[str] = set()
    for index, patient in enumerate(patients):
        if patient.id in seen:
            raise ConfigError("patients.yml", f"patients.{index}.id", "duplicate patient id")
        seen.add(patient.id)
    scripts = _load_scripts(root)
    _check_engine_references(queues, intents, scripts, loaded)
    return Config(directory=str(root), app=app, queues=queues, intents=intents,
                  messages=messages, patients=patients, nlu=loaded["nlu.yml"],
                  safety=loaded["safety.yml"], coverage=loaded["coverage.yml"],
                  policy=loaded["policy.yml"], scheduling=loaded["scheduling.yml"],
                  knowledge=loaded["knowledge.yml"], scripts=scripts,
                  channels=loaded["channels.yml"], agents=loaded["agents.yml"],
                  escalation=loaded["queues.yml"].escalation)


def _load_scripts(root: Path) -> dict[str, Script]:
    """config/scripts/*.yml: one approved script per file, named by its id."""
    scripts: dict[str, Script] = {}
    for path in sorted((root / SCRIPTS_DIR).glob("*.y*ml")):
        name = f"{SCRIPTS_DIR}/{path.name}"
        script: Script = _validate(name, Script, _read_yaml(path))
        if script.id != path.stem:
            raise ConfigError(name, "id", f"script id {script.id!r} must match the file name")
        scripts[script.id] = script
    return scripts


def _check_agent_references(queues: dict[str, QueueConfig], agents: AgentsFile) -> None:
    """Slack channels, email notices and desk accounts name lanes and staff roles from
    queues.yml."""
    slack = agents.slack
    for lane in slack.lane_channels:
        if lane not in queues:
            raise ConfigError("agents.yml", f"slack.lane_channels.{lane}",
                              f"unknown queue {lane!r} (not in queues.yml)")
    roles = {role for queue in queues.values()
             for role in (queue.owner, queue.backup_owner, queue.supervisor,
                          queue.on_call_owner) if role}
    for field_name in ("staff", "staff_channels"):
        for role in getattr(slack, field_name):
            if role not in roles:
                raise ConfigError("agents.yml", f"slack.{field_name}.{role}",
                                  f"unknown staff role {role!r} (queues.yml names: "
                                  f"{', '.join(sorted(roles))})")
    for role in agents.email_notices.staff:
        if role not in roles:
            raise ConfigError("agents.yml", f"email_notices.staff.{role}",
                              f"unknown staff role {role!r} (queues.yml names: "
                              f"{', '.join(sorted(roles))})")
    if slack.enabled:
        unmapped = [lane for lane in queues if not slack.channel_for(lane)]
        if unmapped:
            raise ConfigError("agents.yml", f"slack.lane_channels.{unmapped[0]}",
                              "Slack is enabled: every lane needs a channel (or set "
                              "default_channel)")
    for index, account in enumerate(agents.desk.accounts):
        for lane in account.lanes:
            if lane not in queues:
                raise ConfigError("agents.yml", f"desk.accounts.{index}.lanes",
                                  f"unknown queue {lane!r} (not in queues.yml)")


def _check_engine_references(queues: dict[str, QueueConfig],
                             intents: dict[str, IntentConfig], scripts: dict[str, Script],
                             loaded: dict[str, Any]) -> None:
    """Names that point from one file into another must exist."""
    schedules = loaded["coverage.yml"].schedules
    for lane, queue in queues.items():
        if queue.hours not in schedules:
            raise ConfigError("queues.yml", f"queues.{lane}.hours",
                              f"unknown schedule {queue.hours!r} (not in coverage.yml)")
    for intent, spec in intents.items():
        if spec.script is not None and spec.script not in scripts:
            raise ConfigError("intents.yml", f"intents.{intent}.script",
                              f"unknown script {spec.script!r} (no config/scripts/"
                              f"{spec.script}.yml)")
    for name, script in scripts.items():
        for step in script.steps:
            if step.handoff and step.handoff.lane and step.handoff.lane not in queues:
                raise ConfigError(f"{SCRIPTS_DIR}/{name}.yml", f"steps.{step.id}.handoff.lane",
                                  f"unknown queue {step.handoff.lane!r}")
    _check_agent_references(queues, loaded["agents.yml"])
    upset = loaded["policy.yml"].upset
    for language in ("en", "es"):
        try:
            check_patterns(getattr(upset, language))
        except ValueError as err:
            raise ConfigError("policy.yml", f"upset.{language}", str(err)) from None
    scheduling = loaded["scheduling.yml"]
    for template_name, template in scheduling.templates.items():
        if template.schedule and template.schedule not in schedules:
            raise ConfigError("scheduling.yml", f"templates.{template_name}.schedule",
                              f"unknown schedule {template.schedule!r}")
