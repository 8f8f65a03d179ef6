"""Helpers for the tests: real servers and replay mutation."""
