"""The code location: every domain folder of pipeline/defs, found by Dagster's loader."""

from pathlib import Path

import dagster as dg

from pipeline.resources import refuse_in_process_run_without_database

refuse_in_process_run_without_database()

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
