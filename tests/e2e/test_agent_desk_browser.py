"""The web agent desk in a real browser (Debian's Chromium), against the real app with the
real engine: a patient asks for a person in the portal, an agent signs in on /agent/ in a
second browser context, claims the ticket and replies, and the patient's page shows it.

The desk runs its own server (`desk_server`, real `patientbot serve` under its own Redis key
prefix), because the portal tests expect the sample patients' conversations to start empty.
The sample config's demo desk account signs in (password riverside-desk-demo).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from handoff.web.pages import MESSAGES, SIGNIN_NOTICES
from tests.e2e.conftest import EXPECT_TIMEOUT_MS, PortalServer, running_server
from tests.e2e.test_portal_browser import CSP_WATCH, PATIENTS, UNLABELLED_CONTROLS, send

pytestmark = pytest.mark.browser

DEMO_ACCOUNT, DEMO_PASSWORD = "demo", "riverside-desk-demo"
READY_TIMEOUT = 60.0  # the real engine loads its model first
ASK_FOR_A_PERSON = "I want to talk to a person, please."


@pytest.fixture(scope="module")
def desk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortalServer]:
    """`patientbot serve` with the real engine, under its own Redis key prefix."""
    with running_server(tmp_path_factory.mktemp("desk-server"), "desk",
                        ready_timeout=READY_TIMEOUT) as server:
        yield server


def new_page(browser: Browser, base_url: str) -> tuple[BrowserContext, Page]:
    """A fresh context (own cookies) and page that records script errors and CSP
    violations; dialogs would be dismissed and recorded."""
    context = browser.new_context(base_url=base_url, locale="en-US",
                                  timezone_id="America/New_York",
                                  viewport={"width": 1100, "height": 800})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    page.add_init_script(CSP_WATCH)
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))  # type: ignore[attr-defined]
    page.on("dialog", lambda dialog: (page.errors.append(dialog.message),  # type: ignore
                                      dialog.dismiss()))
    return context, page


def assert_clean(page: Page) -> None:
    assert page.evaluate("window.__cspViolations") == []
    assert page.errors == []  # type: ignore[attr-defined]


def patient_asks_for_a_person(browser: Browser, server: PortalServer,
                              name: str) -> tuple[BrowserContext, Page]:
    context, page = new_page(browser, server.base_url)
    page.goto("/portal/")
    page.get_by_label("Full name").fill(name)
    page.get_by_label("Date of birth").fill(PATIENTS[name])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#chat")).to_be_visible()
    send(page, ASK_FOR_A_PERSON)
    expect(page.locator("#log .msg-out")).to_have_count(1)  # the handoff acknowledgement
    return context, page


def agent_signs_in(page: Page, *, expect_path: str = "/agent/") -> None:
    page.get_by_label("Account").fill(DEMO_ACCOUNT)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{expect_path}")
    expect(page.locator("header .who")).to_contain_text("Signed in as Demo agent")


def newest_front_desk_ticket(page: Page) -> str:
    page.goto("/agent/")
    rows = page.locator('section[data-lane="front_desk"] tbody tr')
    expect(rows.first).to_be_visible()
    return rows.last.get_attribute("data-ticket") or ""


def test_an_agent_claims_and_answers_a_patient_who_asked_for_a_person(
        browser: Browser, desk_server: PortalServer) -> None:
    patient_context, patient = patient_asks_for_a_person(browser, desk_server, "Maria Lopez")
    markup = '<img src=x onerror="window.__xss=1"> my card ends 4242'
    send(patient, markup)  # relayed to the ticket: the desk must show it as text
    expect(patient.locator("#log .msg-in")).to_have_count(2)
    expect(patient.locator("#log .msg-in").last).to_have_attribute("data-status", "sent")

    agent_context, agent = new_page(browser, desk_server.base_url)
    try:
        agent.goto("/agent/")
        expect(agent).to_have_url(desk_server.url("/agent/signin?next=/agent/"))
        agent_signs_in(agent)
        expect(agent.get_by_role("heading", name="Queues")).to_be_visible()
        ticket = newest_front_desk_ticket(agent)
        row = agent.locator(f'tr[data-ticket="{ticket}"]')
        expect(row).to_contain_text("human_agent")
        expect(row.locator("td").nth(3)).to_have_text("open")
        assert agent.evaluate(UNLABELLED_CONTROLS) == []

        row.get_by_role("link", name=ticket).click()
        expect(agent.get_by_role("heading", name=f"Ticket {ticket}")).to_be_visible()
        transcript = agent.locator("#transcript")
        expect(transcript).to_contain_text(ASK_FOR_A_PERSON)
        expect(transcript.locator(".entry-in .text").last).to_have_text(markup)
        assert agent.locator("main img, main svg").count() == 0
        assert agent.evaluate("typeof window.__xss") == "undefined"

        agent.get_by_role("button", name="Claim").click()
        expect(agent.locator(".flash")).to_have_text(MESSAGES["claim_claimed"])
        reply = "Hello Maria, this is the front desk. How can we help with your card?"
        agent.get_by_label("Reply to the patient").fill(reply)
        agent.get_by_role("button", name="Send reply").click()
        expect(agent.locator(".flash")).to_have_text(MESSAGES["replied"])
        expect(transcript.locator(".entry-out .text").last).to_have_text(reply)
        assert agent.evaluate(UNLABELLED_CONTROLS) == []

        # The patient's open portal page gets the reply over its stream.
        expect(patient.locator("#log .msg-out")).to_have_count(2)
        expect(patient.locator("#log .msg-out").last).to_have_text(reply)

        agent.get_by_label("Outcome").select_option("resolved")
        agent.get_by_role("button", name="Resolve").click()
        expect(agent).to_have_url(desk_server.url("/agent/"))
        expect(agent.locator(".flash")).to_have_text(MESSAGES["resolved"])
        expect(agent.locator(f'tr[data-ticket="{ticket}"]')).to_have_count(0)
        expect(patient.locator("#log .msg-out")).to_have_count(3)  # the closing message
        assert_clean(agent)
        assert_clean(patient)
    finally:
        agent_context.close()
        patient_context.close()


def test_a_desk_link_from_another_site_opens_the_ticket_after_sign_in(
        browser: Browser, desk_server: PortalServer) -> None:
    patient_context, _ = patient_asks_for_a_person(browser, desk_server, "James O'Connor")
    port = desk_server.base_url.rsplit(":", 1)[1]
    elsewhere = f"http://localhost:{port}/portal/"  # another site than 127.0.0.1

    def follow_link_from_elsewhere(page: Page, path: str) -> list[str]:
        """As a Slack note's link in a browser: a cross-site navigation, which does not
        carry the SameSite=Strict session cookie; the desk answers with a same-site hop."""
        page.goto(elsewhere)
        page.evaluate("(href) => { const a = document.createElement('a'); a.id = 'note-link';"
                      " a.href = href; a.textContent = 'Open in the desk';"
                      " document.body.prepend(a); }", desk_server.url(path))
        seen: list[str] = []
        page.on("request", lambda request: seen.append(request.header_value("sec-fetch-site"))
                if request.url == desk_server.url(path) else None)
        page.locator("#note-link").click()
        return seen

    signed_in_context, signed_in = new_page(browser, desk_server.base_url)
    stranger_context, stranger = new_page(browser, desk_server.base_url)
    try:
        signed_in.goto("/agent/signin")
        agent_signs_in(signed_in)
        ticket = newest_front_desk_ticket(signed_in)
        path = f"/agent/tickets/{ticket}"

        hops = follow_link_from_elsewhere(signed_in, path)
        expect(signed_in.get_by_role("heading", name=f"Ticket {ticket}")).to_be_visible()
        expect(signed_in).to_have_url(desk_server.url(path))
        assert hops == ["cross-site", "same-origin"]  # the hop carried the cookie

        hops = follow_link_from_elsewhere(stranger, path)
        expect(stranger).to_have_url(desk_server.url(f"/agent/signin?next={path}"))
        assert hops == ["cross-site", "same-origin"]
        agent_signs_in(stranger, expect_path=path)
        expect(stranger.get_by_role("heading", name=f"Ticket {ticket}")).to_be_visible()
        expect(stranger.locator("#transcript")).to_contain_text(ASK_FOR_A_PERSON)
        assert_clean(signed_in)
        assert_clean(stranger)
    finally:
        stranger_context.close()
        signed_in_context.close()
        patient_context.close()


def test_an_idle_desk_signs_itself_out(browser: Browser, desk_server: PortalServer) -> None:
    context, page = new_page(browser, desk_server.base_url)
    try:
        page.clock.install()
        page.goto("/agent/signin")
        agent_signs_in(page)
        with page.expect_response("**/agent/") as poll:
            page.clock.fast_forward("00:11")
        assert poll.value.status == 200  # the queue refresh, a passive poll
        page.clock.fast_forward("16:00")  # agents.yml idle_minutes: 15
        page.wait_for_url("**/agent/signin?notice=idle")
        expect(page.locator("#signin-notice")).to_have_text(SIGNIN_NOTICES["idle"])
        page.goto("/agent/")  # the server ended the session too
        expect(page).to_have_url(desk_server.url("/agent/signin?next=/agent/"))
        assert_clean(page)
    finally:
        context.close()

