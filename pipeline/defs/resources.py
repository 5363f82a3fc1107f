"""The resources every domain's assets use, configured from the environment (pipeline/resources.py)."""

import dagster as dg

from pipeline.resources import resources_from_env


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=resources_from_env())
