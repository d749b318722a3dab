"""patientbot conversation engine: pipeline, sessions, policy, CLI and web app wiring."""
