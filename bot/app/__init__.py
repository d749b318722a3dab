"""The composition root: builds a Runtime from config and settings, serves the web app, and
the `patientbot` command line. The only layer that imports `channels` and `handoff`."""
