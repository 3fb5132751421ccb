"""Observability: logs, audit events and their webhook sink, traces and metrics."""
