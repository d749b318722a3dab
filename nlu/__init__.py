"""Natural-language understanding: safety screen, contact-reason classifier backends
(embedded, Rasa server), entities, language, training data and evaluation.

Entry point: `nlu.service.NluService`. This package never sees channel types."""
