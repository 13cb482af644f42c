"""Scheduling passes over the IR (not built yet)."""
