"""Erasure run in Dagster: the op and job around the plain code of pipeline/erasure.py."""
