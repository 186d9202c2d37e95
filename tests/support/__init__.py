"""Helpers for tests that run fieldhub for real (processes, publishers, polling)."""
