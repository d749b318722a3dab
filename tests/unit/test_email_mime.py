"""Email parsing and composing (channels/email/mime.py): limits, decoding, automated mail,
Authentication-Results, and replies that cannot carry injected headers."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from bot.config.channels import EmailConfig
from bot.core.mail import base_subject, build_reply, one_line, reply_subject, valid_address
from bot.engine.identity import PatientMatch
from channels.email.adapter import UNVERIFIED, conversation_sender, reply_address
from channels.email.mime import (
    MailRefused,
    MimeLimits,
    ParsedMail,
    decode_text,
    html_to_text,
    parse_mail,
)
from nlu.text import prepare

LIMITS = MimeLimits(max_parts=20, max_depth=4, max_decoded_bytes=64 * 1024)
OURS = "mx.clinic.example"


def mail(body: str = "Can I move my visit to Friday?", *, subject: str = "Appointment",
         sender: str = "Anna Example <Anna@Example.ORG>", extra: dict[str, str] | None = None,
         subtype: str = "plain") -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "help@clinic.example"
    message["Subject"] = subject
    message["Message-ID"] = "<m1@example.org>"
    for name, value in (extra or {}).items():
        message[name] = value
    message.set_content(body, subtype=subtype)
    return message


def parse(message: EmailMessage | bytes, **options) -> ParsedMail:
    raw = message if isinstance(message, bytes) else message.as_bytes()
    options.setdefault("limits", LIMITS)
    return parse_mail(raw, **options)


def refused(message: EmailMessage | bytes, **options) -> MailRefused:
    with pytest.raises(MailRefused) as caught:
        parse(message, **options)
    return caught.value


# --- sender, ids, subject, text ----------------------------------------------------------
def test_plain_message_sender_ids_and_subject_line() -> None:
    parsed = parse(mail(extra={"References": "<a@x> <b@y>"}))
    assert parsed.sender == "anna@example.org"
    assert parsed.message_id == "<m1@example.org>"
    assert parsed.references == ("<a@x>", "<b@y>")
    assert parsed.text == "Appointment\n\nCan I move my visit to Friday?"
    assert parsed.attachments == () and parsed.automated is None


def test_a_reply_subject_is_not_read_as_part_of_the_request() -> None:
    parsed = parse(mail("Tuesday works.", subject="RE: Re: Appointment"))
    assert parsed.text == "Tuesday works."
    assert parsed.subject == "RE: Re: Appointment"


def test_subject_alone_is_the_text_of_an_empty_body() -> None:
    assert parse(mail("", subject="Chest pain since this morning")).text == \
        "Chest pain since this morning"


def test_missing_message_id_is_none_and_bare_ids_are_bracketed() -> None:
    message = mail()
    del message["Message-ID"]
    assert parse(message).message_id is None
    message["Message-ID"] = "bare@example.org"
    assert parse(message).message_id == "<bare@example.org>"
    message.replace_header("Message-ID", "<bad id with spaces>")
    assert parse(message).message_id is None


def test_quoted_reply_and_signature_are_left_for_the_nlu_and_kept_for_the_record() -> None:
    body = ("Tuesday works for me.\n\n-- \nAnna\n\nOn Mon, Jan 5, 2026 at 10:00 AM Riverside "
            "Family Clinic <help@clinic.example> wrote:\n> We handed your message to the front "
            "desk.\n> Call 911 in an emergency.")
    parsed = parse(mail(body, subject="Re: Appointment"))
    assert "> We handed your message" in parsed.text  # the whole body is the record
    prepared = prepare(parsed.text, max_chars=2000)
    assert prepared.classify == "Tuesday works for me."
    assert "Call 911" in prepared.full  # the safety screen still reads everything


# --- HTML ----------------------------------------------------------------------------------
def test_html_only_mail_becomes_text_without_scripts_styles_or_markup() -> None:
    html = ("<html><head><title>T</title><style>p{color:red}</style></head><body>"
            "<script>alert('x')</script><p>I need a refill &amp; a callback</p>"
            "<div>Line two<br>Line three</div><img src='http://tracker.example/p.gif'>"
            "<ul><li>one</li><li>two</li></ul><p>&lt;b&gt; is not bold &#8212; ok</p>"
            "<div class='gmail_quote'>On Mon, Clinic wrote:<blockquote>Earlier text"
            "<blockquote>older</blockquote></blockquote></div></body></html>")
    parsed = parse(mail(html, subject="Re: refill", subtype="html"))
    assert parsed.text == ("I need a refill & a callback\n\nLine two\nLine three\n\n"
                           "- one\n- two\n\n<b> is not bold \u2014 ok\n\nOn Mon, Clinic wrote:\n"
                           "> Earlier text\n> > older")
    assert "alert" not in parsed.text and "color" not in parsed.text and "tracker" not in \
        parsed.text
    assert prepare(parsed.text, max_chars=2000).classify.endswith("\u2014 ok")


def test_plain_part_is_preferred_to_html() -> None:
    message = mail("plain words", subject="Re: x")
    message.add_alternative("<p>html words</p>", subtype="html")
    assert parse(message).text == "plain words"


def test_html_to_text_survives_broken_markup() -> None:
    assert html_to_text("<p>unclosed <b>bold <div>and <span") == "unclosed bold\nand <span"
    assert html_to_text("<head><title>x</title><body>visible") == "visible"
    assert html_to_text("<pre>a\n  b</pre>") == "a\n  b"


# --- charsets --------------------------------------------------------------------------------
def test_invalid_and_unknown_charsets_are_decoded_with_replacement() -> None:
    assert decode_text(b"ok \xff\xfe done", "utf-8") == "ok \ufffd\ufffd done"
    assert decode_text("caf\u00e9".encode(), "x-no-such-charset") == "caf\u00e9"
    assert decode_text(b"caf\xe9", None) == "caf\u00e9"  # undeclared 8-bit: Windows-1252
    assert decode_text(b"abc", "zlib") == "abc"  # a bytes codec is not a text charset
    assert decode_text(b"a\x00b", "utf-8") == "ab"
    raw = (b"From: a@example.org\r\nSubject: Re: x\r\nContent-Type: text/plain; charset=utf-8"
           b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nbad \xc3\x28 bytes\r\n")
    assert parse(raw).text == "bad \ufffd( bytes"
    raw = (b"From: a@example.org\r\nSubject: =?x-bogus?q?hi=FF?=\r\n"
           b"Content-Type: text/plain; charset=\"x-bogus\"\r\n\r\nhello\r\n")
    assert parse(raw).text.endswith("hello")


# --- attachments ------------------------------------------------------------------------------
def test_attachments_are_metadata_only() -> None:
    message = mail("See the attached referral.", subject="Re: referral")
    message.add_attachment(b"%PDF-1.4 SECRET-PDF-CONTENT" * 10, maintype="application",
                           subtype="pdf", filename="referral.pdf")
    message.add_attachment(b"\x89PNG" + bytes(96), maintype="image", subtype="png",
                           filename="photo.png")
    message.add_attachment("notes in a file", filename="notes.txt")
    parsed = parse(message)
    assert parsed.text == "See the attached referral."
    assert [(a.content_type, a.size) for a in parsed.attachments] == [
        ("application/pdf", 270), ("image/png", 100), ("text/plain", len("notes in a file\n"))]
    assert "SECRET" not in parsed.text


def test_a_forwarded_message_is_one_attachment_never_read() -> None:
    inner = mail("inner secret words", subject="inner")
    outer = mail("FYI", subject="Re: x")
    outer.add_attachment(inner)
    parsed = parse(outer)
    assert parsed.text == "FYI"
    assert [a.content_type for a in parsed.attachments] == ["message/rfc822"]


def test_odd_attachment_types_are_not_repeated() -> None:
    raw = (b"From: a@example.org\r\nSubject: Re: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n"
           b"\r\nhi\r\n--b\r\nContent-Type: application/john-smith-born-1970-" + b"x" * 120 +
           b"\r\n\r\ndata\r\n--b--\r\n")
    assert [a.content_type for a in parse(raw).attachments] == ["application/octet-stream"]


# --- limits and malformed mail ----------------------------------------------------------------
def nested(depth: int) -> bytes:
    head = b"From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
    body = b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--" +
                boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n")
    return head + body


def test_nesting_beyond_the_depth_limit_is_refused() -> None:
    assert parse(nested(LIMITS.max_depth)).text.endswith("deep")
    err = refused(nested(LIMITS.max_depth + 1))
    assert (err.reply[:3], err.reason) == ("554", "too_deep")


def test_absurd_nesting_is_refused_before_the_parser_recurses() -> None:
    err = refused(nested(5000), limits=MimeLimits(max_parts=1000, max_depth=20))
    assert err.reply.startswith("554")


def test_too_many_parts_is_refused() -> None:
    message = mail("hello", subject="Re: x")
    for index in range(LIMITS.max_parts):
        message.add_attachment(b"x", maintype="application", subtype="octet-stream",
                               filename=f"f{index}.bin")
    err = refused(message)
    assert (err.reply[:3], err.reason) == ("554", "too_many_parts")


def test_decoded_text_beyond_the_limit_is_refused() -> None:
    err = refused(mail("x" * (LIMITS.max_decoded_bytes + 10)))
    assert (err.reply[:3], err.reason) == ("552", "too_large")


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\x01\x02 not a message",
    b"Subject: no sender\r\n\r\nhello\r\n",
    b"From: a@example.org, b@example.org\r\nSubject: x\r\n\r\nhello\r\n",
    b"From: not an address\r\nSubject: x\r\n\r\nhello\r\n",
    b"From: \"quoted,local\"@example.org\r\n\r\nhello\r\n",
    b"From: a@example.org\r\nSubject: " + b"y" * 20_000 + b"\r\n\r\nhello\r\n",
], ids=["empty", "binary", "no-from", "two-from", "no-address", "quoted-local", "huge-subject"])
def test_malformed_mail_is_refused_with_a_short_reason(raw: bytes) -> None:
    err = refused(raw)
    assert err.reply.startswith("550 5.") and len(err.reply) < 80


# --- automated mail ---------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "sender", "envelope", "reason"), [
    ({"Auto-Submitted": "auto-replied"}, None, None, "auto_submitted"),
    ({"Auto-Submitted": "auto-generated; owner-email=x@y"}, None, None, "auto_submitted"),
    ({"X-Autoreply": "yes"}, None, None, "auto_submitted"),
    ({"Precedence": "bulk"}, None, None, "bulk"),
    ({"Precedence": "Junk"}, None, None, "bulk"),
    ({"List-Id": "<news.example.org>"}, None, None, "bulk"),
    ({"List-Unsubscribe": "<mailto:u@example.org>"}, None, None, "bulk"),
    ({}, "MAILER-DAEMON@example.org", None, "bounce"),
    ({}, "postmaster@example.org", None, "bounce"),
    ({}, None, "<>", "bounce"),
    ({}, None, "", "bounce"),
    ({"Return-Path": "<>"}, None, None, "bounce"),
    ({}, "help@clinic.example", None, "own_address"),
])
def test_automated_mail_is_recognised(extra, sender, envelope, reason) -> None:
    message = mail(extra=extra, sender=sender or "anna@example.org")
    parsed = parse(message, envelope_sender=envelope,
                   own_addresses=frozenset({"help@clinic.example"}))
    assert parsed.automated == reason


def test_person_written_mail_is_not_automated() -> None:
    parsed = parse(mail(extra={"Auto-Submitted": "no", "Precedence": "first-class"}),
                   envelope_sender="anna@example.org")
    assert parsed.automated is None


# --- Authentication-Results -------------------------------------------------------------------
def auth(*headers: str, sender: str = "anna@example.org") -> ParsedMail:
    message = mail(sender=sender)
    for header in headers:
        message["Authentication-Results"] = header
    return parse(message, authserv_id=OURS)


def test_our_dmarc_pass_verifies_the_sender() -> None:
    parsed = auth(f"{OURS}; dkim=pass (good sig) header.d=example.org; spf=pass "
                  "smtp.mailfrom=example.org; dmarc=pass header.from=example.org")
    assert parsed.auth.verified
    assert parsed.auth.summary == "dkim=pass spf=pass dmarc=pass"


def test_aligned_dkim_verifies_and_unaligned_or_spf_alone_does_not() -> None:
    assert auth(f"{OURS}; dkim=pass header.d=example.org").auth.verified
    assert auth(f"{OURS}; dkim=pass header.i=@mail.example.org",
                sender="a@mail.example.org").auth.verified
    assert not auth(f"{OURS}; dkim=pass header.d=attacker.example").auth.verified
    assert not auth(f"{OURS}; spf=pass smtp.mailfrom=example.org").auth.verified
    assert not auth(f"{OURS}; dmarc=fail header.from=example.org").auth.verified
    assert not auth(f"{OURS}; dmarc=pass header.from=other.example").auth.verified


def test_results_from_another_authserv_id_are_ignored() -> None:
    forged = auth("evil.example; dkim=pass header.d=example.org; dmarc=pass "
                  "header.from=example.org")
    assert not forged.auth.verified and forged.auth.summary == ""
    # Only our topmost header counts: a forged one with our id further down is ignored.
    layered = auth(f"{OURS}; dkim=none; dmarc=none",
                   f"{OURS}; dkim=pass header.d=example.org; dmarc=pass")
    assert not layered.auth.verified and layered.auth.summary == "dkim=none dmarc=none"
    assert parse(mail(extra={"Authentication-Results": f"{OURS}; dmarc=pass"})).auth.summary \
        == ""  # no authserv_id configured: nothing is trusted


def test_an_unauthenticated_sender_can_never_be_strong_identity() -> None:
    record = PatientMatch("P1", email="anna@example.org")
    unverified = conversation_sender("anna@example.org", verified=False)
    assert unverified == UNVERIFIED + "anna@example.org"
    assert not record.owns_address("email", unverified)
    assert record.owns_address("email", conversation_sender("anna@example.org", verified=True))
    assert reply_address(unverified) == "anna@example.org"


# --- replies and header injection -------------------------------------------------------------
def test_one_line_removes_every_kind_of_line_break() -> None:
    for evil in ("a\r\nBcc: x@y", "a\nBcc: x@y", "a\rBcc: x@y", "a\x85Bcc: x@y",
                 "a\u2028Bcc: x@y", "a\u2029Bcc: x@y", "a\x0bBcc: x@y", "a\x0cBcc: x@y",
                 "a\x1cBcc: x@y", "a\ud800Bcc: x@y"):
        assert "\n" not in one_line(evil) and "\r" not in one_line(evil)
        assert one_line(evil).startswith("a") and one_line(evil).endswith("Bcc: x@y")


def test_reply_subjects() -> None:
    assert reply_subject("Re: RE: AW: Appointment") == "Re: Appointment"
    assert reply_subject("Fwd: question") == "Re: question"
    assert base_subject("  Re[2]:  hi  ") == "hi"
    assert reply_subject("") == ""


def test_build_reply_threads_and_cannot_be_injected() -> None:
    reply = build_reply(from_address="help@clinic.example",
                        from_name="Clinic\r\nBcc: victim@evil.example",
                        to="anna@example.org",
                        subject="Re: hi\r\nBcc: victim@evil.example\u2028X-Evil: 1",
                        text="Thanks.\nWe will call.", domain="clinic.example",
                        in_reply_to="<m2@example.org>",
                        references=("<m1@example.org>", "<r1@clinic.example>",
                                    "<m2@example.org>", "not an id"))
    raw = reply.as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed.get_all("Bcc") is None and parsed.get_all("X-Evil") is None
    assert [str(a.addr_spec) for a in parsed["To"].addresses] == ["anna@example.org"]
    assert parsed["In-Reply-To"] == "<m2@example.org>"
    assert parsed["References"] == "<m1@example.org> <r1@clinic.example> <m2@example.org>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Message-ID"].endswith("@clinic.example>")
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().replace("\r\n", "\n").strip() == "Thanks.\nWe will call."
    headers = raw.split(b"\r\n\r\n")[0].decode()
    assert all(line[:1] in (" ", "\t") or ":" in line for line in headers.split("\r\n"))


@pytest.mark.parametrize("address", ["anna@example.org\r\nBcc: x@y", "a@b.org, c@d.org",
                                     "<a@b.org>", "a b@c.org", "nobody", "a@localhost"])
def test_build_reply_refuses_anything_but_one_plain_address(address: str) -> None:
    assert not valid_address(address)
    with pytest.raises(ValueError):
        build_reply(from_address="help@clinic.example", from_name="", to=address,
                    subject="x", text="y", domain="clinic.example")


def test_config_refuses_line_breaks_in_header_values() -> None:
    with pytest.raises(ValueError):
        EmailConfig(from_name="Clinic\r\nBcc: x@y")
    with pytest.raises(ValueError):
        EmailConfig(enabled=True, from_address="help@clinic.example")  # no recipients
    assert EmailConfig(recipients=[" Help@Clinic.Example "]).recipients == ["help@clinic.example"]


def test_the_channel_refuses_a_from_address_it_could_not_send_from(config) -> None:
    from bot.core.errors import ConfigError
    from channels.email.adapter import EmailChannel

    channels = config.channels.model_copy(update={"email": EmailConfig(
        enabled=True, from_address="help@localhost", recipients=["help@localhost"])})
    with pytest.raises(ConfigError):
        EmailChannel(config.model_copy(update={"channels": channels}), intake=None,
                     store=None, hasher=None, secrets={})
