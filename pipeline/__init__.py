"""Dagster code: knows nothing of HTTP. The code location is pipeline.definitions."""

import warnings

import dagster as dg

# Partitioned asset checks and backfill policies are chosen knowingly (docs/architecture.md);
# their beta/preview warnings would otherwise repeat on every load of the code location.
warnings.filterwarnings("ignore", category=dg.BetaWarning, module=r"(pipeline|dagster)\b")
warnings.filterwarnings("ignore", category=dg.PreviewWarning, module=r"(pipeline|dagster)\b")
