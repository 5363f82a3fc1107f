"""The collector: HTTP in, rows out. Knows nothing of Dagster."""
