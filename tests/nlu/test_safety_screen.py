"""The safety screen with the shipped lexicon: recall first, with negation, experiencer,
history and misspelling handling."""

from __future__ import annotations

import pytest

from bot.config.loader import load_config
from nlu.base import SafetyLevel, SafetyResult
from nlu.safety import LexiconScreen, ModelScores, combine
from tests.conftest import CONFIG_DIR


@pytest.fixture(scope="module")
def screen() -> LexiconScreen:
    return LexiconScreen(load_config(CONFIG_DIR).safety,
                         known_words=["cooking", "class", "appointment"])


@pytest.mark.parametrize("text", [
    "I have crushing chest pain right now",
    "my dad is slurring his words",
    "mi papá no puede hablar bien y tiene la cara caída",
    "I can't breathe",
    "no I cant breathe",  # a new subject after "no": not a negation of the cue
    "i dont want to wake up tomorrow",
    "I wrote goodbye letters to my kids",
    "been saving up my pills for when i am ready",
    "me quiero matar",
    "my son swallowed a bunch of my pills",
    "her lips are swelling and her throat is closing after the bee sting",
    "he's having a seizure",
    "the cut won't stop bleeding",
    "my husband collapsed and won't wake up",
    "I'm going to bring a gun to your office",
    "chets pain and my left arm is numb",  # misspelt
    "my wife has the worst headache of her life",
    "mi hijo convulsiona",
])
def test_emergencies_fire(screen: LexiconScreen, text: str) -> None:
    result = screen.screen(text)
    assert result.level is SafetyLevel.EMERGENCY, (text, result.cues)
    assert any(cue.startswith("emergency:") for cue in result.cues)


@pytest.mark.parametrize("text", [
    "I've had a sore throat and fever for 3 days",
    "tengo tos y dolor de garganta",
    "is it normal to feel dizzy after starting the new medication",
    "I think I might be pregnant",
    "I've been feeling really anxious lately",
])
def test_clinical_messages_are_clinical(screen: LexiconScreen, text: str) -> None:
    assert screen.screen(text).level is SafetyLevel.CLINICAL, text


@pytest.mark.parametrize("text", [
    "no symptoms, just need to move my physical",
    "no tengo síntomas, solo quiero cambiar mi cita",
    "I need a refill of my lisinopril at CVS",
    "can I get a copy of my records",
    "I signed up for a cooking class",
])
def test_admin_messages_and_negated_symptoms_are_not_flagged(screen: LexiconScreen,
                                                             text: str) -> None:
    assert screen.screen(text).level is SafetyLevel.NONE, (text, screen.screen(text).cues)


def test_a_patients_negation_lowers_an_emergency_only_to_clinical(screen: LexiconScreen) -> None:
    result = screen.screen("no chest pain, I just want to ask about my cholesterol results")
    assert result.level is SafetyLevel.CLINICAL


def test_a_third_partys_emergency_is_not_lowered_by_negation(screen: LexiconScreen) -> None:
    result = screen.screen("I'm fine, no, it's my dad, he is not able to speak, slurring words")
    assert result.level is SafetyLevel.EMERGENCY
    assert "third_party" in result.cues


def test_history_lowers_to_clinical_not_none(screen: LexiconScreen) -> None:
    result = screen.screen("I had a stroke years ago and need my records")
    assert result.level is SafetyLevel.CLINICAL


def test_the_trained_component_raises_but_never_lowers() -> None:
    thresholds = {"emergency_threshold": 0.5, "clinical_threshold": 0.5}
    raised = combine(SafetyResult(SafetyLevel.NONE), ModelScores(emergency=0.9, clinical=0.05),
                     **thresholds)
    assert raised.level is SafetyLevel.EMERGENCY and "model:emergency" in raised.cues
    kept = combine(SafetyResult(SafetyLevel.EMERGENCY, ("emergency:stroke",)),
                   ModelScores(emergency=0.0, clinical=0.0), **thresholds)
    assert kept.level is SafetyLevel.EMERGENCY
    clinical = combine(SafetyResult(SafetyLevel.NONE), ModelScores(emergency=0.2, clinical=0.4),
                       **thresholds)
    assert clinical.level is SafetyLevel.CLINICAL
