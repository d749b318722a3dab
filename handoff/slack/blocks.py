"""What patientbot shows in Slack: the ticket note (Block Kit), relayed patient messages, and
escalation notices. Pure functions of (ticket, config, time): no I/O (a warning is logged
when a configured name is too long to offer in a menu), easy to test.

Minimum necessary: a note shows only the fields of `agents.yml slack.note_fields`, in that
order (fields carrying PHI need `phi_capable`, enforced when the config loads); fallback
texts and notices carry codes, configured names and ids only, never patient words.

Everything that did not come from our own config is escaped for mrkdwn (``&``, ``<``, ``>``),
so a patient writing ``<!channel>``, ``<@U123>`` or ``<https://evil|portal>`` shows those
characters instead of pinging a channel or hiding a link.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog

from bot.config.agents import SlackConfig
from bot.config.loader import Config
from bot.core.tickets import HandoffTicket, Priority, TicketStatus
from bot.engine.escalation import callback_due
from handoff.desk import OUTCOMES, RETURNED_TO_BOT, contact_reason, desk_url, waiting_time
from handoff.escalation import STAGE_NAMES

log = structlog.get_logger("patientbot.slack")

# action_id of each control on a note; buttons carry the ticket id as their value, selects
# carry "<ticket id>|<choice>".
CLAIM, RESOLVE, RETURN, MOVE, RELABEL = ("pb_claim", "pb_resolve", "pb_return", "pb_move",
                                         "pb_relabel")
ACTIONS_BLOCK = "pb_actions"
SEPARATOR = "|"
MAX_OPTIONS = 100  # Block Kit's limit for a static_select
OPTION_VALUE_LIMIT = 150  # ... and for an option's value
OPTION_LABEL_LIMIT = 75  # ... and for its label (cut: it is only shown)
SECTION_TEXT_LIMIT = 3000  # Block Kit's limit for a section's text
FIELD_TEXT_LIMIT = 2000  # ... and for each of a section's fields
FIELDS_PER_SECTION = 10

OUTCOME_LABELS = {"resolved": "Resolved", "callback_done": "Callback done",
                  "no_response": "No response from patient", "duplicate": "Duplicate",
                  "referred": "Referred elsewhere", RETURNED_TO_BOT: "Returned to the bot"}
URGENCY = {Priority.NORMAL: "Normal", Priority.URGENT: ":warning: Urgent",
           Priority.EMERGENCY: ":rotating_light: EMERGENCY"}
LABELS = {"reason": "Reason", "urgency": "Urgency", "verification": "Identity",
          "ticket": "Ticket", "desk_link": "Web desk", "queue": "Queue", "waiting": "Queued",
          "status": "Status", "summary": "Patient wrote", "collected": "Collected",
          "checks_done": "Checks done", "action_taken": "Action taken",
          "unresolved": "Unresolved", "callback_due": "Callback due", "channel": "Channel",
          "language": "Language", "owner": "Owner", "transcript": "Transcript"}
# Fields that get a section of their own (long, free text); the rest go side by side.
LONG_FIELDS = frozenset({"summary", "collected", "checks_done", "action_taken", "unresolved"})

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,20}$")
_MENTION_ID = re.compile(r"^[UWS][A-Z0-9]{2,20}$")
_LINK = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")


def escape(text: str) -> str:
    """Slack's three mrkdwn control characters, as Slack documents them."""
    return "".join(_ESCAPES.get(char, char) for char in text)


def clip(text: str, limit: int, *, link: str = "") -> str:
    """`text` escaped, at most `limit` characters once escaped (a cut text ends with "…" and,
    if given, a link to the whole text, both within the limit)."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    suffix = "…" + (f" <{link}|full text in the web desk>" if link else "")
    budget = max(0, limit - len(suffix))
    out: list[str] = []
    size = 0
    for char in text:
        piece = _ESCAPES.get(char, char)
        if size + len(piece) > budget:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + suffix


def mention(staff_id: str) -> str:
    """A user (U/W) or user group (S) id as a Slack mention; anything else escaped."""
    if not _MENTION_ID.match(staff_id or ""):
        return escape(staff_id)
    return f"<!subteam^{staff_id}>" if staff_id.startswith("S") else f"<@{staff_id}>"


def is_user_id(value: str) -> bool:
    return bool(_USER_ID.match(value or ""))


def who(agent: str) -> str:
    """An agent id as Slack shows it: a mention for Slack users, the desk id otherwise."""
    return f"<@{agent}>" if is_user_id(agent) else escape(agent or "someone")


def to_plain(text: str) -> str:
    """An agent's Slack message as plain text for the patient: links become "label (url)",
    mentions and special commands are dropped, entities are unescaped."""
    def link(match: re.Match[str]) -> str:
        target, label = match.group(1), match.group(2)
        if target.startswith(("@", "!", "#")):
            return label or ""
        target = target.removeprefix("mailto:")
        return f"{label} ({target})" if label and label != target else target

    plain = _LINK.sub(link, text)
    return plain.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def slack_date(at: datetime, fmt: str = "{date_short_pretty} {time}") -> str:
    """A time each reader sees in their own time zone (Slack date formatting)."""
    fallback = at.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(at.timestamp())}^{fmt}|{fallback}>"


def reason(ticket: HandoffTicket) -> str:
    """The contact reason (the agents' correction wins), as a code."""
    current, original = contact_reason(ticket)
    if original is None:
        return escape(current)
    return f"{escape(current)} (relabelled from {escape(original)})"


def lane_name(config: Config, lane: str) -> str:
    queue = config.queues.get(lane)
    return escape(queue.display_name if queue else lane)


def last_actor(ticket: HandoffTicket, actions: Sequence[str]) -> str:
    """The staff id behind the latest history entry with one of `actions`."""
    for event in reversed(ticket.history):
        if event.action in actions and event.actor.startswith("agent:"):
            return event.actor.removeprefix("agent:")
    return ""


def state_line(ticket: HandoffTicket) -> str:
    """Where the ticket stands: claimed by whom, escalation, outcome."""
    if ticket.status is TicketStatus.RESOLVED:
        by = last_actor(ticket, ("resolved", RETURNED_TO_BOT))
        label = OUTCOME_LABELS.get(ticket.outcome, escape(ticket.outcome))
        return f":white_check_mark: *Closed*: {label}" + (f" by {who(by)}" if by else "")
    if ticket.status is TicketStatus.CLAIMED:
        return f":raising_hand: *Claimed* by {who(ticket.claimed_by)}"
    line = ":inbox_tray: *Open*: waiting for an agent to claim it"
    if ticket.escalation_stage in STAGE_NAMES:
        line += f" · :bell: escalated ({STAGE_NAMES[ticket.escalation_stage]})"
    return line


def _field(name: str, ticket: HandoffTicket, config: Config, limit: int) -> str | None:
    """One note field as mrkdwn, or None when the ticket has nothing for it."""
    note = ticket.note
    url = desk_url(config, ticket.id)
    match name:
        case "reason":
            return reason(ticket)
        case "urgency":
            return URGENCY[ticket.priority]
        case "verification":
            return escape(note.identity)
        case "ticket":
            return f"`{escape(ticket.id)}`"
        case "desk_link" | "transcript":
            return f"<{url}|Open ticket {escape(ticket.id)}>"
        case "queue":
            return lane_name(config, ticket.lane)
        case "waiting":
            return slack_date(ticket.created_at, "{ago}")
        case "status":
            return state_line(ticket)
        case "summary":
            return clip(note.summary, limit, link=url) if note.summary else None
        case "collected":
            lines = "\n".join(f"{key}: {value}" for key, value in note.collected.items())
            return clip(lines, limit, link=url) if lines else None
        case "callback_due":
            due = callback_due(ticket)
            window = escape(note.callback_window)
            return f"{slack_date(due)} ({window})" if due else window or None
        case "channel":
            return escape(note.channel or ticket.channel)
        case _:  # checks_done, action_taken, unresolved, language, owner: plain note text
            value = str(getattr(note, name, "") or "")
            return clip(value, limit) if value else None


def note_fields(ticket: HandoffTicket, config: Config) -> list[dict[str, Any]]:
    """The allow-listed fields, in the configured order: short ones side by side, long ones
    each in a section of their own."""
    settings: SlackConfig = config.agents.slack
    blocks: list[dict[str, Any]] = []
    row: list[dict[str, Any]] = []

    def flush() -> None:
        for start in range(0, len(row), FIELDS_PER_SECTION):
            blocks.append({"type": "section",
                           "fields": row[start:start + FIELDS_PER_SECTION]})
        row.clear()

    for name in settings.note_fields:
        long = name in LONG_FIELDS
        limit = min(settings.max_text_chars, SECTION_TEXT_LIMIT if long else FIELD_TEXT_LIMIT)
        value = _field(name, ticket, config, limit - len(LABELS[name]) - 8)
        if value is None:
            continue
        text = {"type": "mrkdwn", "text": f"*{LABELS[name]}*\n{value}"}
        if long:
            flush()
            blocks.append({"type": "section", "text": text})
        else:
            row.append(text)
    flush()
    return blocks


def headline(ticket: HandoffTicket, config: Config) -> str:
    """The first line and the notification text: codes and names only."""
    urgency = "" if ticket.priority is Priority.NORMAL else f"{URGENCY[ticket.priority]} "
    return (f"{urgency}Handoff `{escape(ticket.id)}` in {lane_name(config, ticket.lane)}: "
            f"{reason(ticket)}")


def note_text(ticket: HandoffTicket, config: Config) -> str:
    """The message's `text` (notifications, screen readers): urgent and emergency handoffs
    mention the on-call user group."""
    group = config.agents.slack.on_call_group
    page = f"{mention(group)} " if group and ticket.priority is not Priority.NORMAL and \
        ticket.status is not TicketStatus.RESOLVED else ""
    return page + headline(ticket, config)


def _options(action_id: str, tid: str,
             choices: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Select options whose value is "<ticket id>|<choice>". A value over Slack's limit is
    left out (with a warning) rather than cut: a cut value would name an unknown choice."""
    options: list[dict[str, Any]] = []
    for label, choice in choices:
        value = f"{tid}{SEPARATOR}{choice}"
        if len(value) > OPTION_VALUE_LIMIT:
            log.warning("slack option left out: value too long", action=action_id,
                        choice=choice, limit=OPTION_VALUE_LIMIT)
            continue
        options.append({"text": {"type": "plain_text", "text": label[:OPTION_LABEL_LIMIT]},
                        "value": value})
    return options


def _select(action_id: str, placeholder: str, options: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "static_select", "action_id": action_id,
            "placeholder": {"type": "plain_text", "text": placeholder},
            "options": options[:MAX_OPTIONS]}


def controls(ticket: HandoffTicket, config: Config) -> dict[str, Any]:
    """Claim, resolve (with an outcome), return to bot, move, relabel."""
    tid = ticket.id
    elements: list[dict[str, Any]] = []
    if ticket.status is TicketStatus.OPEN:
        elements.append({"type": "button", "action_id": CLAIM, "style": "primary",
                         "text": {"type": "plain_text", "text": "Claim"}, "value": tid})
    elements.append(_select(RESOLVE, "Resolve as…", _options(
        RESOLVE, tid, [(OUTCOME_LABELS[code], code) for code in OUTCOMES])))
    elements.append({"type": "button", "action_id": RETURN, "value": tid,
                     "text": {"type": "plain_text", "text": "Return to bot"},
                     "confirm": {"title": {"type": "plain_text", "text": "Return to the bot?"},
                                 "text": {"type": "plain_text",
                                          "text": "The ticket is closed and the bot answers "
                                                  "the patient again."},
                                 "confirm": {"type": "plain_text", "text": "Return"},
                                 "deny": {"type": "plain_text", "text": "Cancel"}}})
    lanes = _options(MOVE, tid, [(queue.display_name, lane)
                                 for lane, queue in config.queues.items() if lane != ticket.lane])
    if lanes:
        elements.append(_select(MOVE, "Move to lane…", lanes))
    current = ticket.corrected_intent or ticket.note.contact_reason
    intents = _options(RELABEL, tid, [(name, name) for name in config.intents
                                      if name != current])
    if intents:
        elements.append(_select(RELABEL, "Relabel reason…", intents))
    return {"type": "actions", "block_id": ACTIONS_BLOCK, "elements": elements}


def note_blocks(ticket: HandoffTicket, config: Config) -> list[dict[str, Any]]:
    """The whole note; a closed ticket's note has no controls."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": note_text(ticket, config)}},
        *note_fields(ticket, config),
        {"type": "context", "elements": [{"type": "mrkdwn", "text": state_line(ticket)}]},
    ]
    if ticket.status is not TicketStatus.RESOLVED:
        blocks.append(controls(ticket, config))
    return blocks


def moved_blocks(ticket: HandoffTicket, config: Config, channel: str) -> list[dict[str, Any]]:
    """What the old message says once the ticket was re-queued in another lane's channel."""
    text = (f":twisted_rightwards_arrows: Handoff `{escape(ticket.id)}` was moved to "
            f"*{lane_name(config, ticket.lane)}* (continued in <#{channel}>).")
    return [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]


def moved_text(ticket: HandoffTicket, config: Config) -> str:
    return f"Handoff `{escape(ticket.id)}` moved to {lane_name(config, ticket.lane)}"


# --- thread messages -------------------------------------------------------------------------
def patient_message(text: str, at: datetime, *, limit: int, link: str) -> str:
    """A patient's message relayed to the ticket's thread (PHI-capable workspaces only)."""
    return f":speech_balloon: *Patient* ({slack_date(at, '{time}')}):\n" + \
        clip(text, limit, link=link)


def attachments_notice(count: str) -> str:
    return (f":paperclip: The patient sent {escape(count)} attachment(s); they were not opened "
            "or stored. Ask the patient to use the portal for documents.")


# --- escalation notices: ticket id, reason, urgency, waiting time, desk link -----------------
def _facts(ticket: HandoffTicket, config: Config, now: datetime) -> str:
    return (f"`{escape(ticket.id)}` · {lane_name(config, ticket.lane)} · {reason(ticket)} · "
            f"{URGENCY[ticket.priority]} · waiting {waiting_time(ticket.created_at, now)} · "
            f"<{desk_url(config, ticket.id)}|open in the web desk>")


def renotify_text(ticket: HandoffTicket, config: Config, now: datetime, *, to: str) -> str:
    return f":bell: {to}Still unclaimed: {_facts(ticket, config, now)}"


def backup_text(ticket: HandoffTicket, config: Config, now: datetime, *, role: str,
                to: str) -> str:
    return (f":rotating_light: {to}Unclaimed handoff for the backup owner "
            f"({escape(role)}): {_facts(ticket, config, now)}")


def supervisor_text(ticket: HandoffTicket, config: Config, now: datetime, *, role: str,
                    to: str) -> str:
    return (f":rotating_light: {to}Still unclaimed after the backup owner was told "
            f"({escape(role)}): {_facts(ticket, config, now)}")


def callback_text(ticket: HandoffTicket, config: Config, now: datetime, *, due: datetime,
                  to: str) -> str:
    return (f":alarm_clock: {to}The callback promised to the patient is due "
            f"{slack_date(due)}: {_facts(ticket, config, now)}")
