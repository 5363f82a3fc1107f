"""The few S3 operations the pipeline needs, on any S3 endpoint (boto3 client)."""

from __future__ import annotations

from pathlib import Path

from boto3.s3.transfer import TransferConfig

# Files above 64 MiB go up in 64 MiB parts, four at a time.
_TRANSFER = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20,
                           max_concurrency=4)


def upload_file(client, bucket: str, key: str, path: Path) -> None:
    client.upload_file(str(path), bucket, key, Config=_TRANSFER)


def copy_object(client, source_bucket: str, source_key: str, bucket: str, key: str) -> None:
    """Server-side copy: the bytes do not pass through this process again."""
    client.copy({"Bucket": source_bucket, "Key": source_key}, bucket, key, Config=_TRANSFER)


def list_keys(client, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def delete_keys(client, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        chunk = keys[start:start + 1000]
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk],
                                                     "Quiet": True})
