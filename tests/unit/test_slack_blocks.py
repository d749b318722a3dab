"""What patientbot shows in Slack: escaping, truncation, the note's fields and controls, and
escalation notices. Pure functions; every rendered note is checked against Block Kit limits."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from bot.config.agents import NOTE_FIELDS, SlackConfig
from bot.config.loader import Config
from bot.core.tickets import HandoffNote, HandoffTicket, Priority, TicketEvent, TicketStatus
from handoff.desk import OUTCOMES, desk_url
from handoff.slack.blocks import (
    CLAIM,
    MOVE,
    RELABEL,
    RESOLVE,
    RETURN,
    backup_text,
    clip,
    escape,
    mention,
    note_blocks,
    note_text,
    renotify_text,
    to_plain,
    who,
)
from tests.support.doubles import START
from tests.support.slack_api import check_blocks

HOSTILE = "<!channel> <@U0LEAD> <https://evil.example|portal> & co"


def with_slack(config: Config, **options: object) -> Config:
    slack = SlackConfig(enabled=True, default_channel="C0FRONT", **options)
    return config.model_copy(update={"agents": config.agents.model_copy(
        update={"slack": slack})})


def ticket(**changes: object) -> HandoffTicket:
    note = HandoffNote(contact_reason="schedule_appointment", checks_done="identity verified",
                       action_taken="handed to scheduling", queue="scheduling",
                       callback_window="1 business day", unresolved="new time",
                       summary=HOSTILE, identity="verified", language="en", channel="sms",
                       collected={"visit": "annual <physical>"},
                       callback_due=(START + timedelta(hours=4)).isoformat())
    made = HandoffTicket(conversation_id="sms:abc", channel="sms", lane="scheduling",
                         reason="script_review", note=note, id="t0123456789abcd",
                         created_at=START)
    for name, value in changes.items():
        setattr(made, name, value)
    return made


def rendered(config: Config, t: HandoffTicket) -> str:
    return json.dumps(note_blocks(t, config)) + note_text(t, config)


def controls(config: Config, t: HandoffTicket) -> dict[str, dict]:
    [block] = [b for b in note_blocks(t, config) if b["type"] == "actions"] or [{"elements": []}]
    return {e["action_id"]: e for e in block["elements"]}


def test_escape_makes_mentions_and_links_literal() -> None:
    assert escape(HOSTILE) == ("&lt;!channel&gt; &lt;@U0LEAD&gt; "
                               "&lt;https://evil.example|portal&gt; &amp; co")
    assert escape("plain text") == "plain text"


def test_clip_escapes_and_cuts_within_the_limit_without_breaking_an_entity() -> None:
    assert clip("a < b", 100) == "a &lt; b"
    cut = clip("&" * 10, 12)
    assert cut == "&amp;&amp;…" and len(cut) <= 12
    linked = clip("x" * 500, 200, link="https://desk/agent/tickets/t1")
    assert len(linked) <= 200
    assert linked.endswith("… <https://desk/agent/tickets/t1|full text in the web desk>")


def test_agent_replies_become_plain_text_for_the_patient() -> None:
    text = ("See <https://clinic.example/prep|the prep page> &amp; bring &lt;ID&gt; "
            "<@U0LEAD> <mailto:a@b.org|a@b.org> <!here>")
    assert to_plain(text) == ("See the prep page (https://clinic.example/prep) & bring <ID>  "
                              "a@b.org")


def test_mentions() -> None:
    assert mention("U0LEAD") == "<@U0LEAD>" and mention("W0ENT") == "<@W0ENT>"
    assert mention("S0TEAM") == "<!subteam^S0TEAM>"
    assert mention("Front <desk> lead") == "Front &lt;desk&gt; lead"
    assert who("U0AGENT") == "<@U0AGENT>" and who("demo") == "demo"


def test_the_default_note_is_minimum_necessary(config: Config) -> None:
    config = with_slack(config)
    t = ticket()
    text = rendered(config, t)
    for secret in ("channel", "U0LEAD", "evil", "physical", "identity verified", "new time",
                   "sms"):
        assert secret not in text, secret
    assert ("schedule_appointment" in text and "verified" in text and t.id in text
            and desk_url(config, t.id) in text)
    headers = [f["text"].split("\n")[0] for b in note_blocks(t, config)
               if b["type"] == "section" for f in b.get("fields", [])]
    assert headers == ["*Reason*", "*Urgency*", "*Identity*", "*Ticket*", "*Web desk*"]
    assert check_blocks(note_blocks(t, config)) is None


def test_a_phi_note_shows_every_allow_listed_field_in_order_escaped(config: Config) -> None:
    config = with_slack(config, phi_capable=True, note_fields=list(reversed(NOTE_FIELDS)),
                        max_text_chars=200)
    t = ticket()
    t.note = replace(t.note, summary=HOSTILE * 20)
    blocks = note_blocks(t, config)
    assert check_blocks(blocks) is None
    text = json.dumps(blocks)
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert "annual &lt;physical&gt;" in text
    labels = [part.split("\n")[0] for b in blocks[1:-2]
              for part in ([b["text"]["text"]] if "text" in b else
                           [f["text"] for f in b["fields"]])]
    assert labels[0] == "*Transcript*" and labels[-1] == "*Reason*"
    assert labels.index("*Patient wrote*") < labels.index("*Ticket*")


def test_long_patient_text_in_a_note_is_cut_with_a_link(config: Config) -> None:
    config = with_slack(config, phi_capable=True, note_fields=["ticket", "summary"],
                        max_text_chars=200)
    t = ticket()
    t.note = replace(t.note, summary="x" * 1000)
    [summary] = [b["text"]["text"] for b in note_blocks(t, config)
                 if b["type"] == "section" and "text" in b and "Patient wrote" in b["text"]["text"]]
    assert len(summary) <= 200 and summary.endswith("|full text in the web desk>")


def test_controls_follow_the_tickets_state(config: Config) -> None:
    config = with_slack(config)
    open_ = controls(config, ticket())
    assert list(open_) == [CLAIM, RESOLVE, RETURN, MOVE, RELABEL]
    assert [o["value"] for o in open_[RESOLVE]["options"]] == \
        [f"t0123456789abcd|{code}" for code in OUTCOMES]
    assert "t0123456789abcd|scheduling" not in [o["value"] for o in open_[MOVE]["options"]]
    assert "t0123456789abcd|schedule_appointment" not in \
        [o["value"] for o in open_[RELABEL]["options"]]
    claimed = ticket(status=TicketStatus.CLAIMED, claimed_by="U0AGENT")
    assert CLAIM not in controls(config, claimed)
    assert "*Claimed* by <@U0AGENT>" in rendered(config, claimed)
    closed = ticket(status=TicketStatus.RESOLVED, outcome="referred", claimed_by="U0AGENT",
                    history=[TicketEvent("resolved", "agent:U0AGENT", START, "referred")])
    assert controls(config, closed) == {}
    assert "*Closed*: Referred elsewhere by <@U0AGENT>" in rendered(config, closed)
    escalated = ticket(escalation_stage=2)
    assert "backup owner notified" in rendered(config, escalated)


@pytest.mark.parametrize("priority,paged", [(Priority.NORMAL, False), (Priority.URGENT, True),
                                            (Priority.EMERGENCY, True)])
def test_urgent_and_emergency_notes_page_the_on_call_group(config: Config, priority: Priority,
                                                           paged: bool) -> None:
    config = with_slack(config, on_call_group="S0ONCALL")
    t = ticket(priority=priority)
    assert note_text(t, config).startswith("<!subteam^S0ONCALL> ") is paged
    closed = ticket(priority=priority, status=TicketStatus.RESOLVED)
    assert "S0ONCALL" not in note_text(closed, config)


def test_escalation_notices_carry_only_the_minimum(config: Config) -> None:
    config = with_slack(config, phi_capable=True, note_fields=["ticket", "summary"])
    t = ticket()
    now = START + timedelta(minutes=95)
    text = renotify_text(t, config, now, to="<@U0LEAD> ")
    assert text.startswith(":bell: <@U0LEAD> Still unclaimed: `t0123456789abcd`")
    assert "waiting 1 h 35 min" in text and desk_url(config, t.id) in text
    assert "Scheduling" in text and "schedule_appointment" in text and "Normal" in text
    backup = backup_text(t, config, now, role="Front <desk> lead", to="")
    assert "Front &lt;desk&gt; lead" in backup
    for notice in (text, backup):
        assert "evil" not in notice and "physical" not in notice


def test_a_menu_choice_too_long_for_slack_is_left_out_not_cut(config: Config) -> None:
    config = with_slack(config)
    long_lane = "l" * 140  # config validation keeps names short; a bad copy must not break
    queues = {**config.queues, long_lane: next(iter(config.queues.values()))}
    config = config.model_copy(update={"queues": queues})
    with capture_logs() as logs:
        values = [o["value"] for o in controls(config, ticket())[MOVE]["options"]]
    assert values and all(len(value) <= 150 for value in values)
    assert not any(value.endswith("l" * 10) for value in values)  # not cut to a bad name
    assert "t0123456789abcd|front_desk" in values
    assert [(e["event"], e["action"], e["log_level"]) for e in logs] == [
        ("slack option left out: value too long", MOVE, "warning")]
    assert check_blocks(note_blocks(ticket(), config)) is None
