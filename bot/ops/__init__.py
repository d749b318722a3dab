"""Observability: structured logs without PHI, and Prometheus metrics."""
