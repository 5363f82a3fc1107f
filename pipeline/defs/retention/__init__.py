"""Retention: dropping verified hours from PostgreSQL, hourly."""
