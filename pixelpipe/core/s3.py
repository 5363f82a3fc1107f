"""S3 clients for any endpoint (embedded SeaweedFS, MinIO, AWS), and bucket creation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pyarrow.parquet as pq
from botocore.config import Config
from botocore.exceptions import ClientError

_FOOTER_GUESS = 64 * 1024


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


def local_s3(home: Path, port: int, keys: str = "credentials.json") -> tuple[str, str, str] | None:
    """(endpoint, access key, secret key) of the embedded S3 that `pixelpipe up` runs for this
    PIXELPIPE_HOME (its service keys in <home>/s3/credentials.json, its read-only keys in
    reader-credentials.json), or None when there is none."""
    credentials = home / "s3" / keys
    if not credentials.exists():
        return None
    keys = json.loads(credentials.read_text())
    return f"http://127.0.0.1:{port}", keys["access_key"], keys["secret_key"]


def configured_s3_client(settings):
    """S3 as the environment configures it (PIXELPIPE_S3_ENDPOINT, AWS_*); with neither an
    endpoint nor keys, the embedded S3 of a running `pixelpipe up` for this PIXELPIPE_HOME, else
    AWS's usual credential chain."""
    if not settings.s3_endpoint and not settings.aws_access_key_id:
        local = local_s3(settings.home, settings.s3_port)
        if local is not None:
            return s3_client(*local, settings.aws_region)
    return s3_client(settings.s3_endpoint, settings.aws_access_key_id, settings.aws_secret_access_key,
                     settings.aws_region)


def read_parquet_metadata(client, bucket: str, key: str) -> pq.FileMetaData:
    """A Parquet file's footer (row counts, statistics) by range requests, not a download."""
    tail = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{_FOOTER_GUESS}")["Body"].read()
    if tail[-4:] != b"PAR1":
        raise ValueError(f"s3://{bucket}/{key} is not a Parquet file")
    footer_length = int.from_bytes(tail[-8:-4], "little")
    if footer_length + 8 > len(tail):
        tail = client.get_object(
            Bucket=bucket, Key=key, Range=f"bytes=-{footer_length + 8}")["Body"].read()
    # The footer alone parses: read_metadata only needs the last footer_length + 8 bytes.
    return pq.read_metadata(io.BytesIO(tail[-(footer_length + 8):]))
