"""Optional Rasa server backend (see nlu/rasa/client.py) and its training configs."""

from nlu.rasa.client import FALLBACKS, CircuitBreaker, RasaClassifier, RasaUnavailable

__all__ = ["FALLBACKS", "CircuitBreaker", "RasaClassifier", "RasaUnavailable"]
