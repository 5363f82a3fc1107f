"""The Dagster definitions, one folder per domain (export, retention, maintenance, billing,
erasure, analytics, alerts): each folder's modules hold that domain's assets, checks, jobs,
schedules and sensors, and `dg.load_from_defs_folder` (pipeline/definitions.py) finds them, so a
new one is registered by being written in its domain's folder. Nothing else lives under defs/:
every module here is imported by the loader, and the plain code they wire sits beside it in
pipeline/ (docs/architecture.md)."""

import warnings

import dagster as dg

# Partitioned asset checks and backfill policies are chosen knowingly (docs/architecture.md);
# their beta/preview warnings would otherwise repeat on every load of the code location.
warnings.filterwarnings("ignore", category=dg.BetaWarning, module=r"(pipeline|dagster)\b")
warnings.filterwarnings("ignore", category=dg.PreviewWarning, module=r"(pipeline|dagster)\b")
