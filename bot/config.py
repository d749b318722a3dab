"""Operator configuration: config/*.yml validated into typed models at start-up.

Every problem becomes one `ConfigError` naming the file, the key path and the problem. Secrets
never live here (see `bot.settings`); unknown keys are refused so a misplaced secret or a
typo cannot pass silently.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from bot.agent_config import AgentsFile
from bot.channel_config import ChannelsFile
from bot.engine_config import (
    CallbackWindowText,
    CoverageFile,
    KnowledgeFile,
    PolicyFile,
    SchedulingFile,
    Script,
    check_timezone,
)
from bot.errors import ConfigError

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
LaneName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortalConfig(_Model):
    enabled: bool = True
    idle_timeout_minutes: float = Field(15, gt=0, le=240)
    absolute_timeout_minutes: float = Field(120, gt=0, le=1440)
    max_signin_attempts: int = Field(5, ge=1, le=50)
    signin_lockout_minutes: int = Field(15, ge=1, le=1440)


class LimitsConfig(_Model):
    # Longer messages are refused at the channel with a clear error, not truncated.
    max_message_chars: int = Field(4000, ge=100, le=100_000)
    dedupe_ttl_hours: int = Field(72, ge=1, le=24 * 30)
    retention_days: int = Field(90, ge=1, le=3650)


class WorkersConfig(_Model):
    in_process: int = Field(1, ge=0, le=64)
    concurrency: int = Field(32, ge=1, le=1024)
    reclaim_idle_seconds: float = Field(30.0, gt=0)
    lock_ttl_seconds: float = Field(30.0, gt=0)
    order_wait_seconds: float = Field(60.0, ge=0)
    max_deliveries: int = Field(5, ge=2, le=100)


class AppConfig(_Model):
    organisation: str = Field(min_length=1)
    environment: Literal["development", "production"] = "development"
    timezone: str = "UTC"
    public_base_url: str = "http://127.0.0.1:8000"
    data_dir: str = ".data"
    default_language: Literal["en", "es"] = "en"
    limits: LimitsConfig = LimitsConfig()
    workers: WorkersConfig = WorkersConfig()
    portal: PortalConfig = PortalConfig()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)


class QueueConfig(_Model):
    """A human queue (lane): who owns it, when it is staffed, what patients are promised.

    Owners are names staff recognise (a role or team); a missing owner is allowed at load so
    that `patientbot readiness` can name every gap at once.
    """

    display_name: str = Field(min_length=1)
    description: str = ""
    # What patients are told the team is called, per language (default: display_name).
    patient_name: dict[str, str] = {}
    owner: str | None = None
    backup_owner: str | None = None
    supervisor: str | None = None
    hours: str = "office"  # a schedule in coverage.yml
    after_hours: Literal["next_business_day", "on_call"] = "next_business_day"
    on_call_owner: str | None = None  # who takes this lane after hours (on_call mode)
    ack_sla_minutes: int = Field(60, ge=1, le=7 * 24 * 60)
    callback_window: CallbackWindowText = "1 business day"
    on_call_callback_window: CallbackWindowText = "2 hours"

    def name_for_patients(self, language: str) -> str:
        return self.patient_name.get(language) or self.display_name


class EscalationConfig(_Model):
    """queues.yml `escalation:` (optional): how unclaimed handoffs and promised callbacks
    escalate (handoff/escalation.py).

    An unclaimed ticket is re-notified after its lane's ack_sla_minutes, goes to the backup
    owner after another SLA period, then to the supervisor. Emergency tickets use
    min(lane SLA, emergency_ack_minutes). The owner is warned when `callback_alert_share` of
    the time to the promised callback has passed, or `callback_alert_lead_minutes` before it
    is due if that is earlier. With `staffed_hours_only`, a step that falls due while a
    next_business_day lane is closed fires when the lane opens (on-call lanes and emergencies
    escalate at any hour).
    """

    emergency_ack_minutes: int = Field(5, ge=1, le=24 * 60)
    callback_alert_share: float = Field(0.8, gt=0, lt=1)
    callback_alert_lead_minutes: int | None = Field(None, ge=1, le=7 * 24 * 60)
    staffed_hours_only: bool = True
    # How long a sweeper holds a due timer while it fires it; one that dies mid-way loses it
    # to another sweeper after this.
    timer_lease_seconds: float = Field(60.0, gt=0, le=3600)


class QueuesFile(_Model):
    queues: dict[LaneName, QueueConfig]
    escalation: EscalationConfig = EscalationConfig()


class IntentConfig(_Model):
    """A contact reason: its lane, the identity check it needs, the approved script that
    handles it, and (optionally) its own callback window and escalation owner."""

    lane: LaneName | None = None
    identity: Literal["none", "basic", "strong"] = "none"
    script: str | None = None
    callback_window: CallbackWindowText | None = None  # default: the lane's
    escalation_owner: str | None = None  # default: the lane's owner


class IntentsFile(_Model):
    intents: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], IntentConfig]


class Templates(_Model):
    """Patient-facing texts outside scripts; each language must have every one.

    Placeholders: {team} the queue's name for patients, {window} the callback window
    ("within 1 business day"), {opens} when a closed team opens again, {organisation}.
    """

    handoff_ack: str
    handoff_followup: str
    error_fallback: str
    portal_welcome: str
    bot_intro: str  # prefixed to the first reply of a conversation
    emergency_script: str
    clinical_ack: str
    on_call_ack: str  # clinical message after hours, to the on-call owner
    lane_ack: str
    lane_ack_after_hours: str
    closed_until: str  # added to other handoff replies while the team is closed
    human_ack: str
    upset_ack: str
    greeting_reply: str
    thanks_reply: str
    goodbye_reply: str
    out_of_scope_reply: str
    identity_ask_name: str
    identity_ask_dob: str
    identity_retry: str
    identity_failed: str
    identity_needs_portal: str
    # Channels. {portal_url}: the portal's address (app.yml public_base_url + /portal/).
    phi_redirect: str  # replaces a reply with PHI on a channel that must not carry PHI
    attachments_not_accepted: str  # files are never fetched or forwarded
    sms_help: str  # the HELP keyword (carrier requirement)
    sms_stopped: str  # STOP: the last message before opting out
    sms_started: str  # START / UNSTOP
    telegram_start: str  # /start: what the bot can do and the privacy notice
    # "singular|plural" with {n}
    window_hours: str
    window_business_hours: str
    window_days: str
    window_business_days: str
    # Agent desk (handoff/desk.py): sent when an agent resolves the handoff, or gives the
    # conversation back to the bot.
    resolved_closing: str
    returned_to_bot: str


class MessagesFile(_Model):
    messages: dict[Literal["en", "es"], Templates]


class PatientRecord(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    name: str = Field(min_length=1)
    dob: date
    phone: str | None = None
    email: str | None = None


class PatientsFile(_Model):
    patients: list[PatientRecord] = []


Language = Literal["en", "es"]


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"invalid regular expression: {err.msg}") from None
    return value


class NluThresholds(_Model):
    # Below this confidence the contact reason is out_of_scope: no script runs on a guess.
    intent_confidence: float = Field(0.35, ge=0, le=1)
    # The trained safety component raises the level at these probabilities (recall first).
    safety_emergency: float = Field(0.3, gt=0, le=1)
    safety_clinical: float = Field(0.5, gt=0, le=1)


class RasaConfig(_Model):
    url: str = "http://127.0.0.1:5005"
    timeout_seconds: float = Field(1.5, gt=0, le=30)
    retries: int = Field(1, ge=0, le=5)
    breaker_failures: int = Field(5, ge=1, le=1000)
    breaker_reset_seconds: float = Field(30.0, gt=0)


class EntityConfig(_Model):
    phone_region: str = Field("US", pattern=r"^[A-Z]{2}$")
    # How an English all-numeric date is read (Spanish is always day first).
    date_order: Literal["MDY", "DMY"] = "MDY"
    mrn_patterns: list[Annotated[str, AfterValidator(_check_regex)]] = []
    account_patterns: list[Annotated[str, AfterValidator(_check_regex)]] = []


class NluConfig(_Model):
    backend: Literal["embedded", "rasa"] = "embedded"
    # Paths are relative to the project root (the directory above config/).
    training_data: str = "nlu/data/nlu.yml"
    heldout_dir: str = "nlu/data/test"
    languages: list[Language] = ["en", "es"]
    max_classifier_chars: int = Field(1000, ge=100, le=100_000)
    thresholds: NluThresholds = NluThresholds()
    rasa: RasaConfig = RasaConfig()
    entities: EntityConfig = EntityConfig()


def _check_patterns(patterns: list[str]) -> list[str]:
    from nlu.lexicon import PatternError, compile_pattern, normalise_patterns

    normalised = normalise_patterns(patterns)
    for index, pattern in enumerate(normalised):
        try:
            compile_pattern(pattern)
        except PatternError as err:
            raise ValueError(f"pattern {index} ({pattern[:60]!r}): {err}") from None
    return normalised


Patterns = Annotated[list[str], AfterValidator(_check_patterns)]


class LexiconCategory(_Model):
    description: str = ""
    en: Patterns = []
    es: Patterns = []


class NegationRules(_Model):
    triggers: Patterns
    pseudo: Patterns = []


class SafetyLexicon(_Model):
    """config/safety.yml: the safety screen's lexicon (see nlu/lexicon.py for the syntax)."""

    emergency: dict[str, LexiconCategory]
    clinical: dict[str, LexiconCategory]
    negation: dict[Language, NegationRules]
    terminators: dict[Language, Patterns] = {}
    third_party: dict[Language, Patterns] = {}
    historical: dict[Language, Patterns] = {}


class Config(_Model):
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
_FILES: dict[str, tuple[type[_Model], bool]] = {
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
            _check_patterns(getattr(upset, language))
        except ValueError as err:
            raise ConfigError("policy.yml", f"upset.{language}", str(err)) from None
    scheduling = loaded["scheduling.yml"]
    for template_name, template in scheduling.templates.items():
        if template.schedule and template.schedule not in schedules:
            raise ConfigError("scheduling.yml", f"templates.{template_name}.schedule",
                              f"unknown schedule {template.schedule!r}")
