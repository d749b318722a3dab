"""The generic script runner: executes approved YAML scripts (config/scripts/) step by step.

Scripts contain no code: `ask` waits for the patient, `say` and `end` send approved text,
`action` calls a built-in action (bot/engine/actions.py), `branch` picks by a field, `handoff`
ends in a human queue. The runner stops at the first `ask`, `end` or `handoff`; the engine
keeps where it stopped in the session and calls `answer` with the next message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.config.scripts import HandoffStep, Script, Step
from bot.core.errors import PatientbotError
from bot.engine.actions import OPTIONS_ARE_PHI, ActionContext, Actions
from bot.engine.answers import prefill, read_answer
from nlu.base import ParseResult

MAX_STEPS_PER_TURN = 40  # a script that loops without asking is a config error, not a hang
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class ScriptError(PatientbotError):
    """A script could not run (a loop, an unknown action); the engine hands off."""


@dataclass(slots=True)
class ScriptTurn:
    """What one turn of a script produced. `waiting_on` is the `ask` step now awaiting an
    answer; `handoff` ends the script in a queue; neither means the script finished."""

    replies: list[str] = field(default_factory=list)
    phi: bool = False  # a reply discloses PHI (see `discloses_phi`)
    waiting_on: str | None = None
    attempts: int = 0
    handoff: HandoffStep | None = None
    finished: bool = False


# Display values that say nothing about the patient: the visit type's name, a location, open
# times offered to anyone, approved answers.
NOT_PHI = frozenset({"visit_type_name", "location_name", "address", "preparation",
                     "next_steps", "answer", "options"})


def discloses_phi(template: str, fields: Mapping[str, str]) -> bool:
    """Whether rendering `template` with the collected `fields` discloses PHI: anything the
    patient gave or the record holds (an appointment, a medicine, an account number)."""
    names = set(_PLACEHOLDER.findall(template))
    if "options" in names and fields.get(OPTIONS_ARE_PHI) == "1":
        return True
    return any(name in fields and name not in NOT_PHI for name in names)


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill `{name}` placeholders; an unknown name stays visible so readiness can flag it."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text).strip()


class ScriptRunner:
    def __init__(self, actions: Actions) -> None:
        self._actions = actions

    async def start(self, script: Script, ctx: ActionContext, opening: ParseResult) -> ScriptTurn:
        for step in script.steps:
            if step.ask and step.ask.slot not in ctx.fields:
                ctx.fields.update(prefill(step.ask, opening, scheduling=ctx.config.scheduling))
        return await self._run(script, script.steps[0], ctx)

    async def answer(self, script: Script, step_id: str, attempts: int, text: str,
                     parse: ParseResult, ctx: ActionContext) -> ScriptTurn:
        step = script.step(step_id)
        if step.ask is None:
            raise ScriptError("the conversation waits on a step that asks nothing")
        found = read_answer(step.ask, text, parse, ctx.fields,
                            scheduling=ctx.config.scheduling)
        if found is None:
            attempts += 1
            if attempts >= step.ask.max_attempts:
                return ScriptTurn(handoff=HandoffStep(
                    reason="answer_not_understood",
                    unresolved=f"script {script.id} stopped: no valid answer to "
                               f"'{step.id}' after {attempts} tries"))
            prompt = (step.ask.reprompt or step.ask.prompt).get(ctx.language)
            return ScriptTurn(replies=[render(prompt, ctx.values())],
                              phi=discloses_phi(prompt, ctx.fields), waiting_on=step.id,
                              attempts=attempts)
        ctx.fields.update(found)
        following = script.after(step)
        if following is None:
            return ScriptTurn(finished=True)
        return await self._run(script, following, ctx)

    async def _run(self, script: Script, step: Step | None, ctx: ActionContext) -> ScriptTurn:
        turn = ScriptTurn()
        for _ in range(MAX_STEPS_PER_TURN):
            if step is None:
                turn.finished = True
                return turn
            text = (step.say or step.end)
            if text is not None:
                self._say(turn, text.get(ctx.language), ctx)
                if step.end is not None:
                    turn.finished = True
                    return turn
                step = script.after(step)
            elif (ask := step.ask) is not None:
                if ask.slot in ctx.fields:  # already given (prefilled)
                    step = script.after(step)
                    continue
                self._say(turn, ask.prompt.get(ctx.language), ctx)
                turn.waiting_on = step.id
                return turn
            elif step.action is not None:
                outcome = await self._actions.run(step.action.name, ctx)
                target = step.action.outcomes.get(outcome)
                step = script.step(target) if target else script.after(step)
            elif step.branch is not None:
                value = ctx.fields.get(step.branch.slot, "")
                step = script.step(step.branch.cases.get(value, step.branch.default))
            else:
                assert step.handoff is not None
                turn.handoff = step.handoff
                return turn
        raise ScriptError(f"script {script.id} ran {MAX_STEPS_PER_TURN} steps without "
                          "waiting for the patient")

    @staticmethod
    def _say(turn: ScriptTurn, template: str, ctx: ActionContext) -> None:
        turn.replies.append(render(template, ctx.values()))
        turn.phi = turn.phi or discloses_phi(template, ctx.fields)
