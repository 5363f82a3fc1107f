"""Each setting is defined once, in pixelpipe/core/settings.py; the settings table of
docs/operations.md is checked against it, and every consumer reads its defaults from it."""

import re
from dataclasses import fields
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.resources import PipelineSettings
from pixelpipe.core.errors import PixelpipeError
from pixelpipe.core.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# Read by Dagster itself (from $DAGSTER_HOME/dagster.yaml), written by `pixelpipe up`.
NOT_OURS = {"PIXELPIPE_DAGSTER_STORAGE_URL"}


def documented() -> dict[str, str]:
    """variable -> its row's default cell, from the table under '## Settings'."""
    table = DOCS.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            for name in re.findall(r"`([A-Z0-9_]+)`", cells[0]):
                rows[name] = cells[1]
    return rows


def shown(default) -> str:
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    if isinstance(default, tuple):
        return f"`{','.join(default)}`" if default else ""
    if isinstance(default, Path):
        return str(default)
    return f"`{default}`" if default != "" else ""


def test_the_settings_table_documents_each_setting_with_its_default():
    rows = documented()
    variables = {item.metadata["env"]: item for item in fields(Settings)}
    assert set(rows) - NOT_OURS == set(variables)
    for env, item in variables.items():
        text = shown(item.default)
        if text:
            assert text in rows[env], (env, rows[env])
        else:
            assert re.search(r"unset|empty", rows[env]), (env, rows[env])
        assert item.metadata["doc"], env


def test_the_dagster_resources_take_their_defaults_from_the_settings():
    defaults, pipeline = Settings(), PipelineSettings()
    for name in ("client_bucket", "backup_bucket", "export_grace_minutes", "retention_hours",
                 "rejected_retention_days", "alert_webhook_url"):
        assert getattr(pipeline, name) == getattr(defaults, name), name
    assert Decimal(pipeline.billing_rate_per_1000) == defaults.billing_rate_per_1000


@pytest.mark.parametrize(("env", "raw", "message"), [
    ("PIXELPIPE_COLLECTOR_PORT", "eighty", "is not a whole number"),
    ("PIXELPIPE_ANONYMIZE_IP", "maybe", "set it to true or false"),
    ("PIXELPIPE_RATE_LIMIT_PER_IP", "-3", "is not a number >= 0"),
    ("PIXELPIPE_BILLING_RATE_PER_1000", "cheap", "is not a decimal number"),
    ("PIXELPIPE_SITE_POLICY", "closed", "is not one of open, allowlist"),
])
def test_a_bad_value_names_the_variable_and_the_fix(monkeypatch, env, raw, message):
    monkeypatch.setenv(env, raw)
    with pytest.raises(PixelpipeError, match=f"{env}=.*{message}"):
        Settings.from_env()
