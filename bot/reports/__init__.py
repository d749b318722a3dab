"""Quality reports for supervisors: QA scorecards over handoffs and conversations. Empty until
the reports issue lands; new code goes here, above messaging and the store."""
