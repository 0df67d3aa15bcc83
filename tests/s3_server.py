"""An S3 API server for the tests: moto's standalone server, in a thread of the test process,
on a free loopback port. No real S3 server can be installed here; moto speaks the S3 API
(put, get, delete, list) well enough for a client that only stores and reads objects."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from devstack.ports import HOST, free_port

# moto accepts any credentials; boto3 insists on having some.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "gatehouse-test",
    "AWS_SECRET_ACCESS_KEY": "gatehouse-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self) -> str:
        name = f"gatehouse-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def object_keys(self, bucket: str, prefix: str = "") -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(entry["Key"] for entry in listing.get("Contents", []))


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    port = free_port()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()  # returns once the server listens
    try:
        yield S3Server(f"http://{HOST}:{port}")
    finally:
        server.stop()
