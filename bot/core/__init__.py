"""The kernel every layer may use: envelopes, errors, crypto, the session and ticket models,
HTTP and mail helpers. Imports nothing else of patientbot."""
