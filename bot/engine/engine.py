"""The conversation engine: the decision step that runs the policy, identity checks and
approved scripts for every inbound message.

NLU parse -> `policy.decide` (pure) -> carry the verdict out: ask or check identity, run a
script turn, or hand off with a routed, factual note. Everything patient-facing comes from
config templates and scripts; the first reply of a conversation says the bot is automated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from bot.config.loader import Config
from bot.core.crypto import KeyMaterial
from bot.core.envelopes import Inbound
from bot.core.session import IdentityStatus, Session, SessionState
from bot.core.tickets import Priority
from bot.engine.actions import ActionContext, Actions
from bot.engine.coverage import Coverage
from bot.engine.decision import Decision, HandoffRequest, IdentityUpdate, relay_decision
from bot.engine.identity import EncryptedPatientDirectory, PatientDirectory
from bot.engine.knowledge import KnowledgeBase
from bot.engine.notes import build_note
from bot.engine.policy import (
    CONTACTS_SLOT,
    DUPLICATE_SLOT,
    IDENTITY_LEVEL_SLOT,
    OUT_OF_SCOPE_SLOT,
    Kind,
    Verdict,
    decide,
    identity_level,
    message_fingerprint,
    satisfies,
)
from bot.engine.routing import route, window_text
from bot.engine.scheduling import EmbeddedScheduler, Scheduler
from bot.engine.scripts import ScriptRunner, ScriptTurn, discloses_phi, render
from bot.ops import metrics
from bot.store import Store
from nlu.base import ParseResult
from nlu.service import NluService

INTRODUCED_SLOT = "policy.introduced"
IDENTITY = "identity."  # identity.step, identity.name, identity.attempts, identity.level
PENDING = "pending."  # pending.intent, pending.text: the request waiting on identity
SCRIPT = "script."  # script.id, script.step, script.attempts, script.intent
FIELD = "field."  # collected fields of the running script
MAX_NAME_CHARS = 120
# Kinds where the message answers the bot's question rather than starting something.
ANSWER_KINDS = (Kind.IDENTITY_ANSWER, Kind.SCRIPT_ANSWER)


@dataclass(frozen=True, slots=True)
class _Turn:
    """One message being decided: what the engine needs at every step."""

    inbound: Inbound
    session: Session
    parse: ParseResult
    verdict: Verdict
    language: str
    now: datetime


class Engine:
    def __init__(self, config: Config, *, nlu: NluService, directory: PatientDirectory,
                 scheduler: Scheduler, coverage: Coverage | None = None) -> None:
        self._config = config
        self._nlu = nlu
        self._directory = directory
        self._coverage = coverage or Coverage.from_config(config)
        self._actions = Actions(config, scheduler, self._coverage,
                                KnowledgeBase(config.knowledge))
        self._runner = ScriptRunner(self._actions)
        self._scheduler = scheduler

    @classmethod
    def build(cls, config: Config, *, store: Store, keys: KeyMaterial,
              nlu: NluService | None = None) -> Engine:
        coverage = Coverage.from_config(config)
        scheduler = EmbeddedScheduler(config.scheduling, coverage, store, keys.hasher,
                                      default_timezone=config.app.timezone)
        return cls(config, nlu=nlu or NluService.shared(config),
                   directory=EncryptedPatientDirectory(config.patients, keys.sealer,
                                                       keys.hasher),
                   scheduler=scheduler, coverage=coverage)

    @property
    def nlu(self) -> NluService:
        return self._nlu

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    @property
    def coverage(self) -> Coverage:
        return self._coverage

    async def decide(self, inbound: Inbound, session: Session, *, now: datetime) -> Decision:
        parse = await self._nlu.parse(inbound.text, now=now,
                                      conversation_language=session.language)
        metrics.NLU_VERDICTS.labels(safety=parse.safety.value, lane=parse.lane or "none").inc()
        verdict = decide(parse, session, self._config, now)
        language = session.language
        if verdict.language:
            language = verdict.language
        elif verdict.kind not in ANSWER_KINDS and parse.language in self._config.messages:
            language = parse.language  # short answers say little about the language
        turn = _Turn(inbound, session, parse, verdict, language, now)
        decision = await self._carry_out(turn)
        return self._finish(turn, decision)

    # --- verdicts --------------------------------------------------------------------------
    async def _carry_out(self, turn: _Turn) -> Decision:
        verdict, session = turn.verdict, turn.session
        match verdict.kind:
            case Kind.EMERGENCY:
                return self._handoff(turn, lane=verdict.lane or "clinical", reason="emergency",
                                     template="emergency_script", priority=Priority.EMERGENCY,
                                     action="emergency script sent; on-call paged; priority "
                                            "clinical handoff",
                                     unresolved="emergency wording: staff to contact the "
                                                "patient now")
            case Kind.DUPLICATE:
                return Decision(code=verdict.kind.value)
            case Kind.RELAY:
                return relay_decision(self._config, session, turn.now)
            case Kind.CLINICAL:
                return self._handoff(turn, lane="clinical", reason="clinical",
                                     template="clinical_ack",
                                     action="clinical message: not answered by the bot",
                                     unresolved="clinical question or symptom for clinical "
                                                "review")
            case Kind.HUMAN | Kind.UPSET:
                return self._handoff(turn, lane=verdict.lane or "front_desk",
                                     reason=verdict.reason, template=verdict.template,
                                     priority=Priority.URGENT if verdict.kind is Kind.UPSET
                                     else Priority.NORMAL,
                                     supervisor_owns=verdict.supervisor_owns,
                                     action="patient asked for a person" if verdict.kind is
                                     Kind.HUMAN else "upset patient: handed to a person",
                                     unresolved="patient wants to talk with staff")
            case Kind.SOCIAL | Kind.SWITCH_LANGUAGE:
                return Decision(code=verdict.kind.value,
                                replies=(self._text(verdict.template, turn.language),))
            case Kind.OUT_OF_SCOPE:
                count = int(session.slots.get(OUT_OF_SCOPE_SLOT) or 0) + 1
                return Decision(code=verdict.kind.value,
                                replies=(self._text(verdict.template, turn.language),),
                                slots={OUT_OF_SCOPE_SLOT: str(count)})
            case Kind.HANDOFF:
                return self._handoff(turn, lane=verdict.lane or "front_desk",
                                     reason=verdict.reason, template="lane_ack",
                                     action=f"routed by contact reason ({verdict.intent})",
                                     unresolved="request for staff review")
            case Kind.VERIFY:
                return self._start_identity(turn)
            case Kind.IDENTITY_ANSWER:
                return await self._identity_answer(turn)
            case Kind.START_SCRIPT:
                return await self._start_script(
                    turn, verdict.intent, turn.parse,
                    self._identity_code(session, turn.now, verdict.intent))
            case Kind.SCRIPT_ANSWER:
                return await self._script_answer(turn)
        raise AssertionError(f"unhandled verdict {verdict.kind}")

    def _finish(self, turn: _Turn, decision: Decision) -> Decision:
        """Bookkeeping every turn shares: duplicate record, counters, the introduction."""
        if turn.verdict.kind is Kind.DUPLICATE:
            return decision
        slots = dict(decision.slots)
        answered = "1" if turn.verdict.kind in ANSWER_KINDS and not decision.handoff else "0"
        slots[DUPLICATE_SLOT] = (f"{message_fingerprint(turn.inbound.text)}|"
                                 f"{turn.now.isoformat()}|{answered}")
        if turn.verdict.kind is not Kind.OUT_OF_SCOPE:
            slots[OUT_OF_SCOPE_SLOT] = "0"
        if turn.verdict.kind in (Kind.VERIFY, Kind.START_SCRIPT, Kind.HANDOFF):
            slots[CONTACTS_SLOT] = self._contacts(turn)
        replies = decision.replies
        introduce = (replies and not turn.session.slots.get(INTRODUCED_SLOT)
                     and turn.verdict.kind is not Kind.EMERGENCY)
        if introduce:
            intro = self._text("bot_intro", turn.language)
            replies = (f"{intro} {replies[0]}", *replies[1:])
            slots[INTRODUCED_SLOT] = "1"
        return replace(decision, replies=replies, language=turn.language, slots=slots)

    def _contacts(self, turn: _Turn) -> str:
        contacts: dict[str, list[str]] = json.loads(
            turn.session.slots.get(CONTACTS_SLOT) or "{}")
        since = turn.now - timedelta(hours=self._config.policy.upset.repeat_window_hours)
        kept = {intent: [at for at in times if datetime.fromisoformat(at) >= since]
                for intent, times in contacts.items()}
        kept.setdefault(turn.verdict.intent, []).append(turn.now.isoformat())
        return json.dumps({k: v for k, v in kept.items() if v}, separators=(",", ":"))

    # --- handoffs --------------------------------------------------------------------------
    def _text(self, name: str, language: str, **values: str) -> str:
        return render(self._config.text(name, language),
                      {"organisation": self._config.app.organisation, **values})

    def _handoff(self, turn: _Turn, *, lane: str, reason: str, template: str, action: str,
                 unresolved: str, priority: Priority = Priority.NORMAL,
                 supervisor_owns: bool = False, say: str | None = None,
                 identity: str | None = None, fields: dict[str, str] | None = None,
                 script: str = "", audit: tuple[tuple[str, str], ...] = (),
                 intent: str | None = None) -> Decision:
        """Hand the conversation to `lane`: routed by the clock, a note, and the patient told
        who will answer and when. A script or identity check in progress stops; what it
        collected goes into the note."""
        intent = intent or turn.verdict.intent
        if fields is None and turn.session.state is SessionState.IN_SCRIPT:
            fields, script = self._script_progress(turn.session)
        where = route(self._config, self._coverage, lane, now=turn.now, intent=intent,
                      priority=priority, supervisor_owns=supervisor_owns)
        if where.on_call and priority is Priority.NORMAL:
            priority = Priority.URGENT  # taken now by the on-call owner
        values = {"team": self._config.queues[lane].name_for_patients(turn.language),
                  "window": window_text(self._config, where.window, turn.language),
                  "opens": self._coverage.format_when(where.opens, turn.language)
                  if where.opens else ""}
        if template == "clinical_ack" and where.on_call:
            template = "on_call_ack"
        elif template == "lane_ack" and where.opens:
            template = "lane_ack_after_hours"
        if say:
            shown = {k: v for k, v in (fields or {}).items() if not k.startswith("_")}
            text = render(say, {**shown, "organisation": self._config.app.organisation,
                                **values})
        else:
            text = self._text(template, turn.language, **values)
        if where.opens and (say or template != "lane_ack_after_hours"):
            text = f"{text} {self._text('closed_until', turn.language, **values)}"
        identity = identity or self._identity_code(turn.session, turn.now, intent)
        note = build_note(inbound=turn.inbound, session=turn.session, parse=turn.parse,
                          route=where, contact_reason=intent, action=action,
                          unresolved=unresolved, identity=identity, language=turn.language,
                          collected=fields, script=script,
                          request=turn.session.slots.get(PENDING + "text", ""))
        if where.page:
            audit = (*audit, ("oncall.paged", lane))
        return Decision(code=turn.verdict.kind.value, replies=(text,),
                        state=SessionState.HANDED_OFF,
                        handoff=HandoffRequest(lane=lane, reason=reason, note=note,
                                               priority=priority),
                        drop_slots=(IDENTITY + "step", IDENTITY + "name", IDENTITY + "attempts",
                                    PENDING, SCRIPT, FIELD), audit=audit)

    def _script_progress(self, session: Session) -> tuple[dict[str, str], str]:
        """The fields a running script has collected, and its id@version."""
        script = self._config.scripts.get(session.slots.get(SCRIPT + "id", ""))
        fields = {k[len(FIELD):]: v for k, v in session.slots.items() if k.startswith(FIELD)}
        return fields, f"{script.id}@{script.version}" if script else ""

    def _identity_code(self, session: Session, now: datetime, intent: str) -> str:
        """The identity line of the note: the check's result, or that none was needed."""
        level = identity_level(session, self._config, now)
        if level != "none":
            return level
        if session.identity is IdentityStatus.FAILED:
            return "failed"
        spec = self._config.intents.get(intent)
        return "none" if spec and spec.identity != "none" else "not_required"

    # --- identity --------------------------------------------------------------------------
    def _start_identity(self, turn: _Turn) -> Decision:
        required = self._config.intents[turn.verdict.intent].identity
        level = identity_level(turn.session, self._config, turn.now)
        if level == "basic" and required == "strong":
            return self._strong_unavailable(turn)
        return Decision(code=Kind.VERIFY.value, state=SessionState.AWAITING_IDENTITY,
                        replies=(self._text("identity_ask_name", turn.language),),
                        drop_slots=(IDENTITY + "step", IDENTITY + "name", PENDING),
                        slots={IDENTITY + "step": "name", PENDING + "intent": turn.verdict.intent,
                               PENDING + "text": turn.inbound.text[:1000]})

    def _strong_unavailable(self, turn: _Turn, *, identity: IdentityUpdate | None = None,
                            audit: tuple[tuple[str, str], ...] = ()) -> Decision:
        decision = self._handoff(turn, lane="front_desk", reason="identity_strong_unavailable",
                                 template="identity_needs_portal", identity="strong_unavailable",
                                 action="request needs a stronger identity check than this "
                                        "channel allows; nothing disclosed",
                                 unresolved=f"verify identity by phone or portal, then handle "
                                            f"{self._pending_intent(turn)}", audit=audit,
                                 intent=self._pending_intent(turn))
        return _with(decision, code="identity_strong_unavailable", identity=identity,
                     slots={IDENTITY_LEVEL_SLOT: "basic"} if identity else {})

    def _pending_intent(self, turn: _Turn) -> str:
        return turn.session.slots.get(PENDING + "intent") or turn.verdict.intent

    async def _identity_answer(self, turn: _Turn) -> Decision:
        slots = turn.session.slots
        text = " ".join(turn.inbound.text.split())
        if slots.get(IDENTITY + "step") != "dob":
            if not any(c.isalpha() for c in text) or len(text) > MAX_NAME_CHARS:
                return self._identity_retry(turn, failed=False)
            return Decision(code="identity_name", state=SessionState.AWAITING_IDENTITY,
                            replies=(self._text("identity_ask_dob", turn.language),),
                            slots={IDENTITY + "step": "dob", IDENTITY + "name": text})
        born = next((e.value for e in turn.parse.entities
                     if e.entity in ("date_of_birth", "date") and "-W" not in e.value), None)
        match = None
        if born:
            match = await self._directory.match(slots.get(IDENTITY + "name", ""),
                                                date.fromisoformat(born))
        if match is None:
            return self._identity_retry(turn, failed=True)
        level = "strong" if match.owns_address(turn.inbound.channel, turn.session.sender,
                                               region=self._config.nlu.entities.phone_region) \
            else "basic"
        update = IdentityUpdate(IdentityStatus.VERIFIED, match.patient_id)
        audit = (("identity.verified", level),)
        intent = self._pending_intent(turn)
        if not satisfies(level, self._config.intents[intent].identity):
            return self._strong_unavailable(turn, identity=update, audit=audit)
        opening = await self._nlu.parse(slots.get(PENDING + "text", ""), now=turn.now,
                                        conversation_language=turn.language)
        verified = Session(key=turn.session.key, sender=turn.session.sender,
                           identity=IdentityStatus.VERIFIED, identity_verified_at=turn.now,
                           patient_id=match.patient_id, language=turn.language)
        started = await self._start_script(turn, intent, opening, level, session=verified)
        return _with(started, identity=update, audit=(*audit, *started.audit),
                     slots={IDENTITY_LEVEL_SLOT: level, **started.slots},
                     drop_slots=(*started.drop_slots, IDENTITY + "step", IDENTITY + "name",
                                 IDENTITY + "attempts", PENDING))

    def _identity_retry(self, turn: _Turn, *, failed: bool) -> Decision:
        attempts = int(turn.session.slots.get(IDENTITY + "attempts") or 0) + 1
        audit = (("identity.failed", str(attempts)),) if failed else ()
        if attempts >= self._config.policy.identity.max_attempts:
            decision = self._handoff(turn, lane="front_desk", reason="identity_failed",
                                     template="identity_failed", identity="failed",
                                     action=f"identity check failed {attempts} times; "
                                            "nothing disclosed",
                                     unresolved=f"verify identity, then handle "
                                                f"{self._pending_intent(turn)}", audit=audit,
                                     intent=self._pending_intent(turn))
            return _with(decision, code="identity_failed",
                         identity=IdentityUpdate(IdentityStatus.FAILED))
        # The same words whether or not a record exists: nothing is revealed.
        return Decision(code="identity_retry", state=SessionState.AWAITING_IDENTITY,
                        replies=(self._text("identity_retry", turn.language),),
                        slots={IDENTITY + "step": "name", IDENTITY + "attempts": str(attempts)},
                        drop_slots=(IDENTITY + "name",), audit=audit)

    # --- scripts ---------------------------------------------------------------------------
    def _context(self, turn: _Turn, intent: str, fields: dict[str, str], request: str,
                 session: Session | None = None) -> ActionContext:
        lane = self._config.lane_of(intent) or "front_desk"
        where = route(self._config, self._coverage, lane, now=turn.now, intent=intent)
        return ActionContext(
            config=self._config, language=turn.language, now=turn.now,
            patient_id=(session or turn.session).patient_id, fields=fields,
            request_text=request,
            extra={"team": self._config.queues[lane].name_for_patients(turn.language),
                   "window": window_text(self._config, where.window, turn.language),
                   "organisation": self._config.app.organisation})

    async def _start_script(self, turn: _Turn, intent: str, opening: ParseResult,
                            identity: str, *, session: Session | None = None) -> Decision:
        script = self._config.scripts[self._config.intents[intent].script or ""]
        ctx = self._context(turn, intent, {}, opening.text, session)
        result = await self._runner.start(script, ctx, opening)
        return self._script_decision(turn, intent, script.id, result, ctx, identity,
                                     started=True)

    async def _script_answer(self, turn: _Turn) -> Decision:
        slots = turn.session.slots
        intent = slots.get(SCRIPT + "intent", "")
        script = self._config.scripts[slots[SCRIPT + "id"]]
        fields = {k[len(FIELD):]: v for k, v in slots.items() if k.startswith(FIELD)}
        ctx = self._context(turn, intent, fields, slots.get(PENDING + "text", ""))
        result = await self._runner.answer(script, slots[SCRIPT + "step"],
                                           int(slots.get(SCRIPT + "attempts") or 0),
                                           turn.inbound.text, turn.parse, ctx)
        return self._script_decision(turn, intent, script.id, result, ctx,
                                     self._identity_code(turn.session, turn.now, intent))

    def _script_decision(self, turn: _Turn, intent: str, script_id: str, result: ScriptTurn,
                         ctx: ActionContext, identity: str, *, started: bool = False) -> Decision:
        script = self._config.scripts[script_id]
        ref = f"{script.id}@{script.version}"
        audit = tuple(ctx.audit)
        if result.handoff:
            step = result.handoff
            lane = step.lane or self._config.lane_of(intent) or "front_desk"
            turn_for_note = _Turn(turn.inbound, turn.session, turn.parse,
                                  Verdict(Kind.START_SCRIPT, intent, lane, "script"),
                                  turn.language, turn.now)
            decision = self._handoff(turn_for_note, lane=lane, reason=step.reason,
                                     template="lane_ack", identity=identity,
                                     say=step.say.get(turn.language) if step.say else None,
                                     action=f"approved script {ref} ran; {step.reason}",
                                     unresolved=step.unresolved, fields=ctx.fields, script=ref,
                                     audit=audit)
            say_phi = step.say is not None and discloses_phi(step.say.get(turn.language),
                                                            ctx.fields)
            return _with(decision, replies=(*result.replies, *decision.replies),
                         code="script_handoff", phi=result.phi or say_phi)
        if result.waiting_on:
            slots = {SCRIPT + "id": script.id, SCRIPT + "step": result.waiting_on,
                     SCRIPT + "attempts": str(result.attempts), SCRIPT + "intent": intent,
                     **{FIELD + k: v for k, v in ctx.fields.items()}}
            if started:
                slots[PENDING + "text"] = ctx.request_text[:1000]
            return Decision(code="script_started" if started else "script_step",
                            replies=tuple(result.replies), state=SessionState.IN_SCRIPT,
                            slots=slots, drop_slots=(SCRIPT, FIELD), audit=audit,
                            phi=result.phi)
        return Decision(code="script_completed", replies=tuple(result.replies),
                        state=SessionState.ACTIVE, drop_slots=(SCRIPT, FIELD, PENDING),
                        audit=(*audit, ("script.completed", ref)), phi=result.phi)


def _with(decision: Decision, **changes: Any) -> Decision:
    """A copy of `decision` with the given (non-None) fields replaced."""
    return replace(decision, **{k: v for k, v in changes.items() if v is not None})
