"""The `patientbot` command line, one module per command group."""
