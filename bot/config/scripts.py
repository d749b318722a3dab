"""config/scripts/*.yml: approved scripts (asks, actions, branches, handoff steps)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field, model_validator

from bot.config.base import Identifier, LocalText
from bot.core.models import ConfigModel

SlotKind = Literal["text", "yes_no", "number", "date", "visit_type", "option", "medication",
                   "pharmacy", "account", "phone", "email"]


class Ask(ConfigModel):
    """Ask the patient for one field; re-prompt on an invalid answer, hand off after
    `max_attempts` invalid answers."""

    slot: Identifier
    kind: SlotKind = "text"
    prompt: LocalText
    reprompt: LocalText | None = None
    max_attempts: int = Field(2, ge=1, le=5)
    max_chars: int = Field(200, ge=1, le=2000)
    # Take the answer from the opening message when it gives one ("a flu shot next friday").
    # Default: on for visit_type, medication and pharmacy; off otherwise.
    prefill: bool | None = None


class Action(ConfigModel):
    """Call a built-in action (see bot/engine/actions.py); `outcomes` maps its result to a step."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$")
    outcomes: dict[str, str] = {}


class Branch(ConfigModel):
    slot: Identifier
    cases: dict[str, str]
    default: str


class HandoffStep(ConfigModel):
    """End the script with a handoff; the note lists the fields the script collected."""

    lane: Identifier | None = None  # default: the lane of the script's contact reason
    reason: Identifier
    unresolved: str = Field(min_length=1)  # for staff, never shown to patients
    say: LocalText | None = None  # default: the lane acknowledgement


class Step(ConfigModel):
    id: Identifier
    next: str | None = None  # default: the following step
    ask: Ask | None = None
    say: LocalText | None = None
    action: Action | None = None
    branch: Branch | None = None
    handoff: HandoffStep | None = None
    end: LocalText | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("ask", "say", "action", "branch", "handoff", "end")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"step {self.id!r} must have exactly one of ask, say, action, "
                             f"branch, handoff, end (has {', '.join(kinds) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("ask", "say", "action", "branch", "handoff", "end")
                    if getattr(self, k) is not None)

    def targets(self) -> list[str]:
        found = [self.next] if self.next else []
        if self.action:
            found += list(self.action.outcomes.values())
        if self.branch:
            found += [*self.branch.cases.values(), self.branch.default]
        return found


class Script(ConfigModel):
    """An approved script: versioned, owned, dated. Scripts contain no code."""

    id: Identifier
    version: int = Field(ge=1)
    owner: str = Field(min_length=1)
    approved: date
    description: str = ""
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Script:
        ids = [step.id for step in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError("step ids must be unique")
        for step in self.steps:
            for target in step.targets():
                if target not in ids:
                    raise ValueError(f"step {step.id!r} goes to unknown step {target!r}")
        last = self.steps[-1]
        if last.kind not in ("handoff", "end") and not last.targets():
            raise ValueError(f"the last step {last.id!r} must end the script (handoff or end) "
                             "or name its next step")
        return self

    def step(self, step_id: str) -> Step:
        return next(step for step in self.steps if step.id == step_id)

    def after(self, step: Step) -> Step | None:
        """The step that follows `step` when it names no other."""
        if step.next:
            return self.step(step.next)
        index = self.steps.index(step)
        return self.steps[index + 1] if index + 1 < len(self.steps) else None
