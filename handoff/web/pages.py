"""Server-rendered HTML of the web agent desk (handoff/web/desk.py).

Everything dynamic goes through `html.escape`: patient text is untrusted, and so is anything
an agent typed. No inline scripts or styles (the app's CSP forbids them): behaviour is in
static/desk.js, looks in static/desk.css.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from zoneinfo import ZoneInfo

from bot.config.loader import Config
from bot.core.session import Direction, TranscriptEntry
from bot.core.tickets import HandoffTicket, TicketStatus
from handoff.desk import OUTCOMES, REFUSALS, contact_reason, waiting_time
from handoff.escalation import STAGE_NAMES
from handoff.web.auth import DeskSession

# Flash codes -> what the agent is told: the desk's refusals (`DeskError` codes, worded as
# in Slack) and the web desk's own outcomes. Only codes appear here, never patient data.
MESSAGES = {
    **REFUSALS,
    "claim_claimed": "You claimed this ticket.",
    "claim_already_yours": "You already own this ticket.",
    "claim_already_claimed": "Another agent claimed this ticket first.",
    "claim_resolved": REFUSALS["already_resolved"],
    "replied": "Reply sent to the patient.",
    "resolved": "Ticket resolved.",
    "returned": "Conversation handed back to the bot.",
    "moved": "Ticket moved to another lane.",
    "relabelled": "Contact reason recorded.",
}
SUCCESS = frozenset({"claim_claimed", "claim_already_yours", "replied", "resolved", "returned",
                     "moved", "relabelled"})
SIGNIN_NOTICES = {
    "signed_out": "You have signed out.",
    "expired": "Your session has ended. Please sign in again.",
    "idle": "You were signed out after a period without activity.",
}
SIGNIN_ERRORS = {
    "bad_credentials": "We could not sign you in with that account and password.",
    "locked": "Too many failed sign-ins for this account. Please wait and try again, or ask "
              "for a sign-in link.",
    "token_invalid": "That sign-in link is not valid. Ask for a new one.",
    "token_expired": "That sign-in link has expired. Ask for a new one.",
    "token_used": "That sign-in link was already used. Ask for a new one.",
    "form_expired": "The form had expired. Please try again.",
}


def _row_class(ticket: HandoffTicket) -> str:
    """Priority colour; escalated tickets (unclaimed past their SLA) stand out too."""
    escalated = " escalated" if ticket.escalation_stage else ""
    return f"prio-{escape(ticket.priority.value)}{escalated}"


def _options(values: Iterable[tuple[str, str]], *, exclude: str = "") -> str:
    return "".join(f'<option value="{escape(value)}">{escape(label)}</option>'
                   for value, label in values if value != exclude)


def _speaker(entry: TranscriptEntry) -> str:
    if entry.direction is Direction.IN:
        return "Patient"
    if entry.direction is Direction.EVENT:
        return "Event"
    if entry.actor.startswith("agent:"):
        return f"Agent {entry.actor.removeprefix('agent:')}"
    return entry.actor.capitalize()


DELIVERY = {"pending": "sending…", "sent": "sent",
            "undeliverable": "NOT DELIVERED: the channel refused it (e.g. the patient opted out)"}


def _delivery(status: str) -> str:
    """A reply's outbox status, next to it in the transcript."""
    if status not in DELIVERY:
        return ""
    return f' <span class="delivery delivery-{status}">{escape(DELIVERY[status])}</span>'


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'


class DeskPages:
    """Renders the desk's pages for one config (names, lanes, intents, time zone)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._zone = ZoneInfo(config.app.timezone)
        self._idle_seconds = config.agents.desk.idle_minutes * 60

    def _time(self, at: datetime | None) -> str:
        return at.astimezone(self._zone).strftime("%Y-%m-%d %H:%M") if at else ""

    def _lane(self, lane: str) -> str:
        queue = self._config.queues.get(lane)
        return queue.display_name if queue else lane

    # --- frame -----------------------------------------------------------------------------
    def frame(self, title: str, content: str, *, session: DeskSession | None = None,
              poll: str = "", flash: str = "", redirect: str = "") -> str:
        """A whole page. `poll`: what desk.js refreshes (``queues``); `redirect`: a same-site
        URL to go on to at once (meta refresh: works without script)."""
        org = escape(self._config.app.organisation)
        head = ""
        body_data = ""
        if session is not None:
            body_data = f' data-idle-seconds="{self._idle_seconds}" data-poll="{escape(poll)}"'
            head = (f'<header class="bar"><a class="brand" href="/agent/">{org} agent desk</a>'
                    f'<span class="who">Signed in as {escape(session.account.name)} '
                    f'({escape(session.account.id)})</span>'
                    '<form id="signout-form" method="post" action="/agent/signout">'
                    f'{_hidden("csrf", session.csrf)}{_hidden("reason", "agent")}'
                    '<button type="submit">Sign out</button></form></header>')
        else:
            head = f'<header class="bar"><span class="brand">{org} agent desk</span></header>'
        refresh = (f'<meta http-equiv="refresh" content="0; url={escape(redirect)}">'
                   if redirect else "")
        notice = ""
        if flash in MESSAGES:
            role, kind = ("status", "ok") if flash in SUCCESS else ("alert", "error")
            notice = f'<p class="flash {kind}" role="{role}">{escape(MESSAGES[flash])}</p>'
        return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                '<meta name="referrer" content="no-referrer">'
                f"{refresh}<title>{escape(title)} - {org} agent desk</title>"
                '<link rel="stylesheet" href="/agent/static/desk.css">'
                '<script src="/agent/static/desk.js" defer></script></head>'
                f'<body{body_data}><a class="skip" href="#main">Skip to content</a>{head}'
                f'<main id="main">{notice}{content}</main></body></html>')

    def message(self, title: str, text: str, *, session: DeskSession | None = None,
                link: tuple[str, str] = ("/agent/", "Back to the queues")) -> str:
        return self.frame(title, f"<h1>{escape(title)}</h1><p>{escape(text)}</p>"
                                 f'<p><a href="{escape(link[0])}">{escape(link[1])}</a></p>',
                          session=session)

    # --- sign-in ---------------------------------------------------------------------------
    def signin(self, *, csrf: str, next_path: str, account: str = "", error: str = "",
               notice: str = "") -> str:
        alert = (f'<p class="flash error" role="alert" id="signin-error">'
                 f"{escape(SIGNIN_ERRORS[error])}</p>" if error in SIGNIN_ERRORS else "")
        info = (f'<p class="flash ok" role="status" id="signin-notice">'
                f"{escape(SIGNIN_NOTICES[notice])}</p>" if notice in SIGNIN_NOTICES else "")
        form = ('<form class="signin" method="post" action="/agent/signin">'
                f'{_hidden("csrf", csrf)}{_hidden("next", next_path)}'
                '<label for="account">Account</label>'
                f'<input id="account" name="account" value="{escape(account)}" required '
                'autocomplete="username" autocapitalize="none" spellcheck="false" '
                'maxlength="64">'
                '<label for="password">Password</label>'
                '<input id="password" name="password" type="password" required '
                'autocomplete="current-password" maxlength="1024">'
                '<button type="submit">Sign in</button></form>')
        return self.frame("Sign in", f"<h1>Agent sign-in</h1>{info}{alert}{form}")

    def token_confirm(self, *, csrf: str, token: str, name: str) -> str:
        # A button, not an automatic sign-in: link scanners that open the link must not use
        # it up (it signs in once).
        form = ('<form class="signin" method="post" action="/agent/token">'
                f'{_hidden("csrf", csrf)}{_hidden("t", token)}'
                f'<button type="submit">Sign in as {escape(name)}</button></form>')
        return self.frame("Sign in", "<h1>Agent sign-in</h1><p>This link signs you in "
                                     f"once.</p>{form}")

    def bounce(self, path: str) -> str:
        """Cross-site link arrivals (a Slack note) go on with a same-site navigation, which
        carries the SameSite=Strict session cookie."""
        return self.frame("Agent desk", '<p><a href="' + escape(path) + '">Continue to the '
                          "agent desk</a></p>", redirect=path)

    # --- queues ----------------------------------------------------------------------------
    def queues(self, session: DeskSession, lanes: Sequence[tuple[str, list[HandoffTicket]]],
               now: datetime, *, flash: str = "") -> str:
        sections = [self._lane_table(lane, tickets, now) for lane, tickets in lanes]
        content = ('<h1>Queues</h1><div id="queues" aria-live="off">'
                   f'{"".join(sections)}<p class="stamp">Updated {self._time(now)}</p></div>')
        return self.frame("Queues", content, session=session, poll="queues", flash=flash)

    def _lane_table(self, lane: str, tickets: list[HandoffTicket], now: datetime) -> str:
        heading = (f'<h2 id="lane-{escape(lane)}">{escape(self._lane(lane))} '
                   f'<span class="count">({len(tickets)})</span></h2>')
        if not tickets:
            return (f'<section class="lane" data-lane="{escape(lane)}" '
                    f'aria-labelledby="lane-{escape(lane)}">{heading}'
                    '<p class="empty">No open tickets.</p></section>')
        rows = "".join(
            f'<tr class="{_row_class(t)}" data-ticket="{escape(t.id)}">'
            f'<td><a href="/agent/tickets/{escape(t.id)}">{escape(t.id)}</a></td>'
            f"<td>{escape(contact_reason(t)[0])}</td>"
            f'<td><span class="prio">{escape(t.priority.value)}</span></td>'
            f"<td>{escape(self._status(t))}</td>"
            f"<td>{escape(waiting_time(t.created_at, now))}</td>"
            f"<td>{escape(t.note.identity)}</td></tr>"
            for t in tickets)
        return (f'<section class="lane" data-lane="{escape(lane)}" '
                f'aria-labelledby="lane-{escape(lane)}">{heading}'
                '<table><thead><tr><th scope="col">Ticket</th><th scope="col">Reason</th>'
                '<th scope="col">Priority</th><th scope="col">Status</th>'
                '<th scope="col">Waiting</th><th scope="col">Verification</th></tr></thead>'
                f"<tbody>{rows}</tbody></table></section>")

    @staticmethod
    def _status(ticket: HandoffTicket) -> str:
        if ticket.status is TicketStatus.CLAIMED:
            return f"claimed by {ticket.claimed_by}"
        if ticket.status is TicketStatus.RESOLVED:
            return f"resolved ({ticket.outcome})"
        if ticket.escalation_stage in STAGE_NAMES:  # unclaimed past its acknowledge SLA
            return f"open, escalated: {STAGE_NAMES[ticket.escalation_stage]}"
        return "open"

    # --- one ticket ------------------------------------------------------------------------
    def ticket(self, session: DeskSession, ticket: HandoffTicket,
               transcript: list[TranscriptEntry], now: datetime, *, flash: str = "",
               delivery: Mapping[str, str] | None = None) -> str:
        content = (f"<h1>Ticket {escape(ticket.id)}</h1>"
                   f'<div class="ticket-grid"><section aria-labelledby="note-h">'
                   f'<h2 id="note-h">Note</h2>{self._note(ticket, now)}</section>'
                   f'<section aria-labelledby="actions-h"><h2 id="actions-h">Actions</h2>'
                   f"{self._actions(session, ticket)}</section></div>"
                   f'<section aria-labelledby="transcript-h"><h2 id="transcript-h">Transcript'
                   f"</h2>{self._transcript(transcript, delivery or {})}</section>"
                   f'<section aria-labelledby="history-h"><h2 id="history-h">History</h2>'
                   f"{self._history(ticket)}</section>")
        return self.frame(f"Ticket {ticket.id}", content, session=session, flash=flash)

    def _note(self, ticket: HandoffTicket, now: datetime) -> str:
        note = ticket.note
        reason, original = contact_reason(ticket)
        if original is not None:
            reason = f"{reason} (relabelled from {original})"
        safety = note.safety + (f" ({', '.join(note.safety_cues)})" if note.safety_cues else "")
        rows = [
            ("Contact reason", reason), ("Priority", ticket.priority.value),
            ("Status", self._status(ticket)), ("Lane", self._lane(ticket.lane)),
            ("Waiting", waiting_time(ticket.created_at, now)),
            ("Created", self._time(ticket.created_at)), ("Verification", note.identity),
            ("Checks done", note.checks_done), ("Action taken", note.action_taken),
            ("Unresolved", note.unresolved), ("Callback window", note.callback_window),
            ("Callback due", note.callback_due), ("Safety", safety),
            ("After hours", "yes" if note.after_hours else "no"),
            ("Answerable owner", note.owner), ("Channel", ticket.channel),
            ("Language", note.language), ("Patient's words", note.summary),
        ]
        rows += [(f"Collected: {name}", value) for name, value in note.collected.items()]
        items = "".join(f"<dt>{escape(label)}</dt><dd>{escape(str(value))}</dd>"
                        for label, value in rows if value not in ("", None))
        return f'<dl class="note">{items}</dl>'

    def _form(self, session: DeskSession, ticket: HandoffTicket, action: str, inner: str,
              button: str) -> str:
        return (f'<form class="action" id="{escape(action)}-form" method="post" '
                f'action="/agent/tickets/{escape(ticket.id)}/{escape(action)}">'
                f'{_hidden("csrf", session.csrf)}{inner}'
                f'<button type="submit">{escape(button)}</button></form>')

    def _actions(self, session: DeskSession, ticket: HandoffTicket) -> str:
        """What the agent may do now; the desk enforces the same rules again."""
        me = session.account.id
        parts: list[str] = []
        open_ = ticket.status is TicketStatus.OPEN
        mine = ticket.status is TicketStatus.CLAIMED and ticket.claimed_by == me
        if ticket.status is TicketStatus.CLAIMED and not mine:
            parts.append(f'<p class="owner">Claimed by {escape(ticket.claimed_by)}.</p>')
        if open_:
            parts.append(self._form(session, ticket, "claim", "", "Claim"))
        if mine:
            limit = self._config.app.limits.max_message_chars
            parts.append(self._form(
                session, ticket, "reply",
                '<label for="reply-text">Reply to the patient</label>'
                f'<textarea id="reply-text" name="text" rows="4" maxlength="{limit}" '
                'required></textarea><label class="check"><input type="checkbox" name="phi" '
                'value="1"> Contains health information (channels that cannot carry it get a '
                "portal pointer)</label>", "Send reply"))
        if open_ or mine:
            outcomes = _options((code, code.replace("_", " ")) for code in OUTCOMES)
            parts.append(self._form(session, ticket, "resolve",
                                    '<label for="outcome">Outcome</label>'
                                    f'<select id="outcome" name="outcome">{outcomes}</select>',
                                    "Resolve"))
            parts.append(self._form(session, ticket, "return", "", "Return to bot"))
            lanes = _options(((lane, queue.display_name)
                              for lane, queue in self._config.queues.items()),
                             exclude=ticket.lane)
            parts.append(self._form(session, ticket, "move",
                                    '<label for="lane">Move to lane</label>'
                                    f'<select id="lane" name="lane">{lanes}</select>', "Move"))
        current = ticket.corrected_intent or ticket.note.contact_reason  # as relabel checks
        intents = _options(((name, name) for name in sorted(self._config.intents)),
                           exclude=current)
        parts.append(self._form(session, ticket, "relabel",
                                '<label for="intent">Correct contact reason</label>'
                                f'<select id="intent" name="intent">{intents}</select>',
                                "Relabel"))
        return "".join(parts)

    def _transcript(self, entries: list[TranscriptEntry], delivery: Mapping[str, str]) -> str:
        if not entries:
            return '<p class="empty">No messages.</p>'
        items = "".join(
            f'<li class="entry entry-{escape(e.direction.value)}">'
            f'<span class="speaker">{escape(_speaker(e))}</span> '
            f'<time datetime="{escape(e.at.isoformat())}">{escape(self._time(e.at))}</time>'
            f"{_delivery(delivery.get(e.message_id, ''))}"
            f'<p class="text">{escape(e.text)}</p></li>'
            for e in entries)
        return f'<ol class="transcript" id="transcript">{items}</ol>'

    def _history(self, ticket: HandoffTicket) -> str:
        if not ticket.history:
            return '<p class="empty">No changes yet.</p>'
        rows = "".join(f"<tr><td>{escape(self._time(e.at))}</td><td>{escape(e.action)}</td>"
                       f"<td>{escape(e.actor)}</td><td>{escape(e.detail)}</td></tr>"
                       for e in ticket.history)
        return ('<div class="scroll"><table class="history"><thead><tr><th scope="col">When</th>'
                '<th scope="col">What</th><th scope="col">Who</th><th scope="col">Detail</th>'
                f"</tr></thead><tbody>{rows}</tbody></table></div>")
