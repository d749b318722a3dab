"""With `backend: rasa` and Rasa unreachable, the embedded model answers and says so."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from bot.config.loader import load_config
from bot.core.crypto import load_key_material
from bot.core.envelopes import ConversationKey, Inbound, utcnow
from bot.core.session import Session
from bot.engine.engine import Engine
from bot.store.memory import MemoryStore
from nlu.service import NluService
from tests.conftest import free_port, key_env

TEXT = "I need a copy of my medical records"
HANDOFF_TEXT = "can I please talk to a real person at the front desk"


def fallbacks() -> float:
    return sum(sample.value for metric in REGISTRY.collect()
               if metric.name == "patientbot_nlu_backend_fallbacks"
               for sample in metric.samples if sample.name.endswith("_total"))


async def test_unreachable_rasa_falls_back_to_embedded_and_the_note_says_so(
        config_dir: Path, tmp_path: Path) -> None:
    nlu_file = config_dir / "nlu.yml"
    nlu_file.write_text(nlu_file.read_text()
                        .replace("backend: embedded", "backend: rasa")
                        .replace("url: http://127.0.0.1:5005",
                                 f"url: http://127.0.0.1:{free_port()}"))
    config = load_config(config_dir)
    service = NluService.from_config(config)
    before = fallbacks()
    try:
        result = await service.parse(TEXT)
        keys = load_key_material(key_env(), tmp_path)
        engine = Engine.build(config, store=MemoryStore(keys.sealer, keys.hasher), keys=keys,
                              nlu=service)
        decision = await engine.decide(
            Inbound(channel="portal", sender="P1001", provider_message_id="m1",
                    text=HANDOFF_TEXT),
            Session(key=ConversationKey("portal", "0" * 16), sender="P1001"), now=utcnow())
    finally:
        await service.aclose()

    assert (result.intent, result.lane) == ("records_request", "records")
    assert result.degraded and "classifier_fallback" in result.notes
    assert fallbacks() > before
    assert decision.handoff is not None
    assert "configured classifier unreachable" in decision.handoff.note.triage
    assert decision.handoff.note.nlu_backend == "embedded (rasa unavailable)"
