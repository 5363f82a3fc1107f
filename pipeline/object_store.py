"""The few S3 operations the pipeline needs, on any S3 endpoint (boto3 client)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
from boto3.s3.transfer import TransferConfig

# Files above 64 MiB go up in 64 MiB parts, four at a time.
_TRANSFER = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20,
                           max_concurrency=4)
_FOOTER_GUESS = 64 * 1024


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
