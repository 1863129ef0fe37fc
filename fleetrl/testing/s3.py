"""A real S3 API on this machine for tests of the object-store paths: moto's server (``moto[server]``,
a dev dependency) on a free port, with a bucket, and the ``s3://`` URLs pyarrow's S3 filesystem opens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fleetrl.testing.net import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fleetrl-test", "AWS_SECRET_ACCESS_KEY": "fleetrl-test", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@dataclass(frozen=True)
class LocalS3:
    endpoint: str  # host:port
    bucket: str

    def url(self, prefix: str) -> str:
        """``s3://bucket/prefix`` with the endpoint and scheme pyarrow needs to reach the local server."""
        return f"s3://{self.bucket}/{prefix.strip('/')}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def keys(self, prefix: str = "") -> list[str]:
        """The bucket's object keys under ``prefix`` (directory markers left out)."""
        import boto3

        client = boto3.client("s3", endpoint_url=f"http://{self.endpoint}")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(
            o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")
        )


@contextmanager
def local_s3(bucket: str = "fleetrl") -> Iterator[LocalS3]:
    """Start moto's S3 server, create ``bucket``, set test credentials in the environment (pyarrow and
    boto3 read them there), and stop it all afterwards."""
    import boto3
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket=bucket)
        yield LocalS3(f"127.0.0.1:{port}", bucket)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
