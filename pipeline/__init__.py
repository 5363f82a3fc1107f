"""The pipeline: plain code (the bucket's layout, the export ledger, verification, statements,
erasure, the analytics) beside its Dagster wiring in pipeline/defs/, loaded by
pipeline.definitions (the code location). Knows nothing of HTTP. Importing a plain module loads
no Dagster (an import-linter contract in pyproject.toml)."""
