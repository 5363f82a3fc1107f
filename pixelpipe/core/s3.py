"""S3 clients for any endpoint (embedded SeaweedFS, MinIO, AWS), and bucket creation."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def s3_client(endpoint: str, access_key: str, secret_key: str, region: str):
    """A boto3 S3 client; an empty endpoint means AWS itself."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        region_name=region or "us-east-1",
        config=Config(
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def ensure_buckets(client, buckets: list[str]) -> list[str]:
    """Create the buckets that do not exist yet; returns the ones created."""
    created = []
    for bucket in dict.fromkeys(buckets):
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
                raise
            client.create_bucket(Bucket=bucket)
            created.append(bucket)
    return created


def local_s3(home: Path, port: int) -> tuple[str, str, str] | None:
    """(endpoint, access key, secret key) of the embedded S3 that `pixelpipe up` runs for this
    PIXELPIPE_HOME (its service keys in <home>/s3/credentials.json), or None when there is none."""
    credentials = home / "s3" / "credentials.json"
    if not credentials.exists():
        return None
    keys = json.loads(credentials.read_text())
    return f"http://127.0.0.1:{port}", keys["access_key"], keys["secret_key"]
