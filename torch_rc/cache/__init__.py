"""Persistent artifacts: serialized compiled graphs (tuning-record store lands here too)."""
