"""Contact-reason classification: safety screen, intent classifiers, entities, language.

Filled in by the NLU issue; the pipeline reaches it only through `bot.decision.DecisionStep`.
"""
