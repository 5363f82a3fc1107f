"""The loaded definitions against a committed text (definitions_snapshot.txt): asset keys, their
dependencies and partitions, checks, jobs, schedules, sensors and resources. Every name in it is a
contract (issue 23), and the defs folder registers whatever a module defines, so an accidental
change to the graph (a renamed key, a lost dependency, a helper object picked up by the loader)
shows in review as a change to that file.

After a deliberate change, write the new text with `.venv/bin/python -m tests.pipeline.test_definitions_snapshot`
and commit it beside the change.
"""

import difflib
from pathlib import Path

import dagster as dg

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.txt")


def _partitions(partitions_def) -> str:
    """The partitioning without its start: that is the installation's first hour, not the graph's."""
    if partitions_def is None:
        return "none"
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return (f"{type(partitions_def).__name__}(cron={partitions_def.cron_schedule!r}, "
                f"timezone={partitions_def.timezone}, fmt={partitions_def.fmt!r}, "
                f"end_offset={partitions_def.end_offset})")
    return type(partitions_def).__name__


def _automation(condition) -> str:
    return "none" if condition is None else condition.get_label() or type(condition).__name__


def describe(defs: dg.Definitions) -> str:
    repository = defs.get_repository_def()
    graph = repository.asset_graph
    lines = ["# The loaded Dagster definitions (tests/pipeline/test_definitions_snapshot.py).", "", "[assets]"]
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        lines.append(f"{key.to_user_string()}: {'materializable' if node.is_materializable else 'external'}, "
                     f"group={node.group_name}, partitions={_partitions(node.partitions_def)}, "
                     f"automation={_automation(node.automation_condition)}")
        for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
            mapping = graph.get_partition_mapping(key, parent)
            lines.append(f"  <- {parent.to_user_string()} ({type(mapping).__name__})")
    lines += ["", "[checks]"]
    for check in sorted(graph.asset_check_keys, key=lambda c: (c.asset_key.to_user_string(), c.name)):
        spec = graph.get_check_spec(check)
        lines.append(f"{check.asset_key.to_user_string()}:{check.name} blocking={spec.blocking}")
    lines += ["", "[jobs]"]
    for job in sorted(repository.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue  # Dagster's implicit asset job
        assets = sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
        ops = sorted(job.graph.node_dict) if not assets else []
        lines.append(f"{job.name}: assets={assets or '-'}, ops={ops or '-'}, "
                     f"partitions={_partitions(job.partitions_def)}")
    lines += ["", "[schedules]"]
    for schedule in sorted(repository.schedule_defs, key=lambda s: s.name):
        lines.append(f"{schedule.name}: job={schedule.job_name}, cron={schedule.cron_schedule!r}, "
                     f"timezone={schedule.execution_timezone}, default={schedule.default_status.value}")
    lines += ["", "[sensors]"]
    for sensor in sorted(repository.sensor_defs, key=lambda s: s.name):
        lines.append(f"{sensor.name}: {type(sensor).__name__}, default={sensor.default_status.value}")
    lines += ["", "[resources]", *sorted(repository.get_top_level_resources()), ""]
    return "\n".join(lines)


def test_the_loaded_definitions_match_the_committed_snapshot():
    from pipeline.definitions import defs

    loaded, committed = describe(defs), SNAPSHOT.read_text()
    assert loaded == committed, (
        "The Dagster graph changed. If that is meant, run `.venv/bin/python -m "
        "tests.pipeline.test_definitions_snapshot` and commit the file:\n"
        + "".join(difflib.unified_diff(committed.splitlines(True), loaded.splitlines(True),
                                       "definitions_snapshot.txt", "loaded")))


if __name__ == "__main__":
    from pipeline.definitions import defs

    SNAPSHOT.write_text(describe(defs))
    print(f"wrote {SNAPSHOT}")
