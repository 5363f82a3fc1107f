"""Dagster code: knows nothing of HTTP. The code location is pipeline.definitions."""
