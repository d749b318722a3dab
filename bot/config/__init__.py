"""Operator configuration: config/*.yml validated into typed models, one module per file
(`loader` reads the directory and cross-checks it), plus the secrets from the environment
(`settings`)."""
