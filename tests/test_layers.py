"""The three floors (docs/architecture.md), enforced: import-linter's contracts in pyproject."""

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pixelpipe

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_goes_downward():
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_every_top_floor_module_is_forbidden_to_the_floors_below():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden_to_services = set(contracts[1]["forbidden_modules"])
    top_floor = {f"pixelpipe.{m.name}" for m in pkgutil.iter_modules(pixelpipe.__path__) if m.name != "core"}
    assert top_floor == forbidden_to_services
    assert top_floor <= set(contracts[0]["forbidden_modules"])


def test_every_pipeline_module_is_plain_or_dagster_wiring():
    """A new module of pipeline is either under the no-Dagster contract or one of Dagster's own."""
    import pipeline

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    plain = next(c for c in contracts if c["name"] == "The pipeline's plain code imports no Dagster")
    dagster_side = {"pipeline.defs", "pipeline.definitions", "pipeline.resources", "pipeline.partitions"}
    modules = {f"pipeline.{m.name}" for m in pkgutil.iter_modules(pipeline.__path__)}
    assert modules == set(plain["source_modules"]) | dagster_side
    assert dagster_side <= set(plain["forbidden_modules"])


def test_the_intake_core_imports_no_http():
    """issue 22: the one intake core (ingest_service/intake.py) is reached by every protocol's
    front end the same way; it must not grow a Starlette (or any HTTP front end) import."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    core = [c for c in contracts if c.get("source_modules") == ["ingest_service.intake"]]
    assert len(core) == 1 and core[0]["type"] == "forbidden"
    assert {"starlette", "ingest_service.http", "ingest_service.app"} <= set(core[0]["forbidden_modules"])
    assert core[0].get("allow_indirect_imports") is False
