"""docker-compose.yml is valid Compose and sets only variables pixelpipe actually reads."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
THIRD_PARTY = {"postgres", "s3", "buckets"}  # images we do not build; their variables are theirs


def test_compose_file_matches_the_compose_spec():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_set_for_pixelpipe_services_is_read_by_the_code():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    code = "\n".join(p.read_text() for folder in ("pixelpipe", "ingest_service", "pipeline")
                     for p in (ROOT / folder).rglob("*.py"))
    code += (ROOT / "dagster.yaml").read_text()
    names = set()
    for name, service in compose["services"].items():
        if name in THIRD_PARTY:
            continue
        assert service.get("image") == "pixelpipe:latest", name
        names |= set(service.get("environment", {}))
    assert {"DATABASE_URL", "PIXELPIPE_S3_ENDPOINT", "PIXELPIPE_DAGSTER_STORAGE_URL"} <= names
    unread = {n for n in names if not re.search(rf"[\"']{n}[\"']|env: {n}\b", code)}
    assert unread == set()


def test_dagster_ui_is_not_published_beyond_localhost():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["dagster-webserver"]["ports"] == ["127.0.0.1:3000:3000"]


def test_no_secret_has_a_default_and_the_app_is_not_the_s3_root():
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "S3_ROOT_PASSWORD", "S3_SECRET_KEY", "S3_ACCESS_KEY", "S3_ROOT_USER"):
        assert re.findall(rf"\$\{{{secret}(:?[-?])", text) and set(re.findall(rf"\$\{{{secret}(:?[-?])", text)) == {":?"}, secret
    compose = yaml.safe_load(text)
    minio = compose["services"]["s3"]["environment"]
    assert minio["MINIO_ROOT_USER"] != compose["x-pixelpipe-env"]["AWS_ACCESS_KEY_ID"]
