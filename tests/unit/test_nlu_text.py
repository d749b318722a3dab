"""Text preparation: what the safety screen and the classifier read."""

from __future__ import annotations

import pytest

from nlu.text import clean, fold, latest_reply, prepare


def test_clean_applies_nfkc_and_removes_invisible_and_bidi_characters() -> None:
    hidden = "che\u200bst pa\u202ein \ufeffnow"
    assert clean(hidden) == "chest pain now"
    assert clean("ｃｈｅｓｔ　ｐａｉｎ") == "chest pain"  # full-width letters and space
    assert clean("a\u00adb\r\nc") == "ab\nc"


def test_fold_removes_case_and_accents() -> None:
    assert fold("Mañana DOLOR de pecho, Corazón") == "manana dolor de pecho, corazon"


@pytest.mark.parametrize(("email", "kept", "dropped"), [
    ("Hi,\n\nI need to move my appt to next week.\n\nThanks,\nAnn\nSent from my iPhone\n\n"
     "On Tue, Oct 6, 2026 at 9:14 AM Clinic <noreply@example.org> wrote:\n"
     "> Your appointment is confirmed\n> for Oct 8", "move my appt", ["confirmed", "iPhone"]),
    # mail-parser-reply's Spanish header needs two blanks before "escribió"; Gmail writes one.
    ("Hola,\nnecesito cancelar mi cita.\n\nSaludos,\nMaria\nEnviado desde mi iPhone\n\n"
     "El mar, 6 oct 2026 a las 9:14, Clínica <noreply@example.org> escribió:\n"
     "> Su cita está confirmada", "cancelar", ["confirmada", "iPhone"]),
])
def test_email_keeps_only_the_newest_reply_without_signature(email: str, kept: str,
                                                            dropped: list[str]) -> None:
    reply = latest_reply(email)
    assert kept in reply
    assert not [text for text in dropped if text in reply]


def test_chat_text_and_hyphen_lists_are_left_alone() -> None:
    assert latest_reply("Thanks, can I get a refill") == "Thanks, can I get a refill"
    assert latest_reply("- chest pain\n- cant breathe") == "- chest pain\n- cant breathe"


def test_long_messages_are_capped_for_the_classifier_but_kept_whole_for_safety() -> None:
    text = "please reschedule " * 200 + "my chest hurts badly"
    prepared = prepare(text, max_chars=1000)
    assert prepared.truncated
    assert len(prepared.classify) <= 1000
    assert prepared.full.endswith("my chest hurts badly")
