"""The patient-portal web chat in a real browser, against the real app (see conftest.py).

Each test signs in as a different sample patient from config/patients.yml where it sends
messages, because a patient's portal conversation is shared by all their sign-ins: the
front-desk handoff acknowledgement is only the reply to the first message of a conversation.
Mind the sign-in rate limits when adding tests: failed attempts count
(portal.max_signin_attempts per name, 4x that per client address, per lockout window), and
all tests share one server, so one client address (127.0.0.1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Page, expect

from channels.portal.adapter import SIGNIN_FAILED

pytestmark = pytest.mark.browser

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
TOKEN_KEY = "patientbot.portal.token"


def _config(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / name).read_text(encoding="utf-8"))


MESSAGES = _config("messages.yml")["messages"]["en"]
HANDOFF_ACK = MESSAGES["handoff_ack"]
WELCOME = MESSAGES["portal_welcome"]
MAX_MESSAGE_CHARS = _config("app.yml")["limits"]["max_message_chars"]
PATIENTS = {p["name"]: str(p["dob"]) for p in _config("patients.yml")["patients"]}
MARIA, JAMES, HOA = "Maria Lopez", "James O'Connor", "Nguyễn Thị Hoa"
CLIENT_MAX_LEN = 2000  # the textarea's maxlength and portal.js MAX_LEN

XSS_PAYLOADS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=2</script>",
    '"><svg onload=window.__xss=3>',
]

# Records CSP violations: an injected handler or script that CSP blocked is still a bug.
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__cspViolations.push(
    e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sample || '')));
"""

# Every form control needs an accessible label: a non-empty <label>, aria-label or aria-labelledby.
UNLABELLED_CONTROLS = """
() => [...document.querySelectorAll('input, textarea, select')]
  .filter((c) => c.type !== 'hidden')
  .filter((c) => {
    const labels = [...(c.labels || [])].some((l) => l.textContent.trim());
    const aria = (c.getAttribute('aria-label') || '').trim();
    const by = (c.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean)
      .some((id) => (document.getElementById(id)?.textContent || '').trim());
    return !(labels || aria || by);
  })
  .map((c) => c.outerHTML)
"""


def log_texts(page: Page, selector: str = "#log > *") -> list[str]:
    """Exact textContent of the log's entries (speaker labels are CSS, not text)."""
    return page.locator(selector).evaluate_all("(nodes) => nodes.map((n) => n.textContent)")


def sign_in(page: Page, name: str, dob: str | None = None) -> None:
    page.goto("/portal/")
    page.get_by_label("Full name").fill(name)
    page.get_by_label("Date of birth").fill(dob or PATIENTS[name])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#chat")).to_be_visible()
    expect(page.locator("#signin")).to_be_hidden()


def send(page: Page, text: str) -> None:
    page.locator("#message").fill(text)
    page.locator("#message").press("Enter")


def test_patient_signs_in_with_keyboard_chats_and_sees_history_after_reload(page: Page) -> None:
    page.goto("/portal/")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#chat")).to_be_hidden()

    # Keyboard only: Tab past the skip link into the form, type the name, type the date
    # (segments mm/dd/yyyy in en-US advance by themselves), Tab to the button, Enter.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Full name")).to_be_focused()
    page.keyboard.type(MARIA)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Date of birth")).to_be_focused()
    year, month, day = PATIENTS[MARIA].split("-")
    page.keyboard.type(month + day + year)
    expect(page.get_by_label("Date of birth")).to_have_value(PATIENTS[MARIA])
    # Chromium keeps focus in the year segment (years can have more digits) and may stop on
    # the picker button, so Tab until focus leaves the date field.
    for _ in range(3):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") != "dob":
            break
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")

    expect(page.locator("#chat")).to_be_visible()
    expect(page.locator("#whoami")).to_have_text("Signed in as Maria Lopez")
    # The form is cleared so identity details do not linger in the hidden form.
    expect(page.get_by_label("Full name")).to_have_value("")
    expect(page.get_by_label("Date of birth")).to_have_value("")
    # A new conversation opens with the welcome line, which is not a delivered reply.
    expect(page.locator("#log > .msg-welcome")).to_have_text(WELCOME)
    expect(page.locator("#log .msg-out")).to_have_count(0)

    message = "Hello, I need to move my appointment next week."
    expect(page.locator("#message")).to_be_focused()
    page.keyboard.type(message)
    expect(page.locator("#counter")).to_have_text(f"{len(message)} / {CLIENT_MAX_LEN}")
    page.keyboard.press("Enter")

    mine = page.locator("#log .msg-in")
    expect(mine).to_have_count(1)
    expect(mine).to_have_text(message)
    expect(mine).to_have_attribute("data-status", "sent")
    expect(page.locator("#message")).to_have_value("")
    reply = page.locator("#log .msg-out")
    expect(reply).to_have_count(1)
    expect(reply).to_have_text(HANDOFF_ACK)
    assert log_texts(page) == [WELCOME, message, HANDOFF_ACK]

    # A reload re-renders from the server's history (the token is in sessionStorage).
    with page.expect_request("**/portal/api/stream**"):
        page.reload()
    expect(page.locator("#chat")).to_be_visible()
    expect(page.locator("#log .msg-in")).to_have_text([message])
    expect(page.locator("#log .msg-out")).to_have_text([HANDOFF_ACK])
    assert log_texts(page) == [WELCOME, message, HANDOFF_ACK]
    expect(page.locator("#log .msg-in")).to_have_attribute("data-status", "sent")

    # Signing out clears the screen and ends the session on the server too.
    old_token = page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
    with page.expect_response("**/portal/api/signout") as signout:
        page.get_by_role("button", name="Sign out").click()
    assert signout.value.status == 204
    expect(page.locator("#signin-notice")).to_have_text("You have signed out.")
    expect(page.locator("#chat")).to_be_hidden()
    expect(page.locator("#log > *")).to_have_count(0)
    stale = page.request.get("/portal/api/history",
                             headers={"Authorization": f"Bearer {old_token}"})
    assert stale.status == 401

    # Signing in again to a conversation that is not empty: the history, no welcome.
    sign_in(page, MARIA)
    expect(page.locator("#log .msg-out")).to_have_text([HANDOFF_ACK])
    assert log_texts(page) == [message, HANDOFF_ACK]
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_message_markup_is_shown_as_text_and_never_executed(page: Page) -> None:
    page.add_init_script(CSP_WATCH)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, JAMES)

    for payload in XSS_PAYLOADS:
        send(page, payload)
    mine = page.locator("#log .msg-in")
    expect(mine).to_have_count(len(XSS_PAYLOADS))
    for i in range(len(XSS_PAYLOADS)):
        expect(mine.nth(i)).to_have_attribute("data-status", "sent")
    # The first message of the conversation gets the acknowledgement: the round trip worked.
    expect(page.locator("#log .msg-out").first).to_have_text(HANDOFF_ACK)

    def check_rendered_as_text() -> None:
        assert log_texts(page, "#log .msg-in") == XSS_PAYLOADS
        assert page.locator("#log img, #log svg, #log script, #log iframe").count() == 0
        assert page.locator("img, svg").count() == 0
        assert page.locator("script").count() == 1  # only portal.js
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.evaluate("window.__cspViolations") == []
        assert page.dialogs == []  # type: ignore[attr-defined]
        assert errors == []

    check_rendered_as_text()
    # The same text re-rendered from the server's history.
    with page.expect_request("**/portal/api/stream**"):
        page.reload()
    expect(page.locator("#log .msg-in")).to_have_count(len(XSS_PAYLOADS))
    expect(page.locator("#log .msg-out").first).to_have_text(HANDOFF_ACK)
    check_rendered_as_text()


def test_wrong_date_of_birth_shows_the_generic_error(page: Page) -> None:
    page.goto("/portal/")
    error = page.locator("#signin-error")
    expect(error).to_be_empty()

    page.get_by_label("Full name").fill(MARIA)
    page.get_by_label("Date of birth").fill("1984-03-13")
    page.get_by_role("button", name="Sign in").click()
    expect(error).to_have_text(SIGNIN_FAILED)
    expect(page.locator("#chat")).to_be_hidden()
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

    # An unknown patient gets exactly the same answer (no hint whether a record exists).
    page.get_by_label("Full name").fill("Nobody Known")
    page.get_by_label("Date of birth").fill("1970-01-01")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_enabled()
    expect(error).to_have_text(SIGNIN_FAILED)
    expect(page.locator("#chat")).to_be_hidden()


def test_overlong_message_is_flagged_and_chat_stays_usable(page: Page) -> None:
    sign_in(page, HOA)
    box, counter, chat_error = (page.locator("#message"), page.locator("#counter"),
                                page.locator("#chat-error"))

    # Typing/pasting stops at the textarea's maxlength; the counter flags the limit.
    box.fill("x" * (CLIENT_MAX_LEN + 500))
    assert len(box.input_value()) == CLIENT_MAX_LEN
    expect(counter).to_have_text(f"{CLIENT_MAX_LEN} / {CLIENT_MAX_LEN}")
    expect(counter).to_have_class("counter near-limit")

    # Text put in by script past maxlength: the client refuses to send it and says why.
    box.evaluate("(el, n) => { el.value = 'y'.repeat(n); "
                 "el.dispatchEvent(new Event('input', { bubbles: true })); }",
                 CLIENT_MAX_LEN + 1)
    box.press("Enter")
    expect(chat_error).to_contain_text("too long")
    expect(chat_error).to_contain_text(str(CLIENT_MAX_LEN))
    expect(page.locator("#log .msg-in")).to_have_count(0)
    assert len(box.input_value()) == CLIENT_MAX_LEN + 1  # kept so the patient can shorten it

    # The server enforces its own limit (limits.max_message_chars) with a clear error.
    token = page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
    response = page.request.post("/portal/api/messages",
                                 headers={"Authorization": f"Bearer {token}"},
                                 data={"client_message_id": "overlong-0001",
                                       "text": "z" * (MAX_MESSAGE_CHARS + 1)})
    assert response.status == 413
    assert str(MAX_MESSAGE_CHARS) in response.json()["error"]

    # The chat still works: a normal message goes out and the bot answers.
    box.fill("")
    expect(counter).to_have_text(f"0 / {CLIENT_MAX_LEN}")
    expect(counter).not_to_have_class("counter near-limit")
    send(page, "Can I get a copy of my visit summary?")
    expect(page.locator("#log .msg-in")).to_have_text(["Can I get a copy of my visit summary?"])
    expect(page.locator("#log .msg-in")).to_have_attribute("data-status", "sent")
    expect(chat_error).to_be_empty()
    expect(page.locator("#log .msg-out")).to_have_text([HANDOFF_ACK])
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_small_screen_has_no_horizontal_scroll_and_controls_are_labelled(page: Page) -> None:
    page.set_viewport_size({"width": 360, "height": 740})

    def check_layout() -> None:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"page is {width}px wide at a 360px viewport"
        assert page.evaluate(UNLABELLED_CONTROLS) == []

    page.goto("/portal/")
    expect(page.get_by_label("Full name")).to_be_visible()
    expect(page.get_by_label("Date of birth")).to_be_visible()
    check_layout()

    # An error message must not widen the page either.
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_have_text("Please enter your full name.")
    check_layout()

    sign_in(page, JAMES)
    expect(page.get_by_label("Your message")).to_be_visible()
    expect(page.locator("#log")).to_have_attribute("aria-busy", "false")  # history rendered
    check_layout()
    # The chat's buttons stay on screen.
    for name in ("Send", "Sign out"):
        box = page.get_by_role("button", name=name).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, name
