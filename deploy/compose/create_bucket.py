"""Create the local stack's bucket on the S3-compatible store (the compose `create-bucket` job).

Idempotent: an existing bucket is left alone. The endpoint and credentials come from the standard
AWS_* environment variables (AWS_ENDPOINT_URL=http://minio:9000 in docker-compose.yaml), the
bucket name from VAEAUG_BUCKET (default "vaeaug").
"""

from __future__ import annotations

import os
import sys

import s3fs


def ensure_bucket(name: str, fs: s3fs.S3FileSystem | None = None) -> bool:
    """Create bucket `name` unless it exists; returns True when it was created."""
    fs = fs or s3fs.S3FileSystem()
    if fs.exists(name):
        return False
    fs.mkdir(name)
    fs.invalidate_cache()
    return True


def main() -> int:
    name = os.environ.get("VAEAUG_BUCKET", "vaeaug")
    created = ensure_bucket(name)
    print(f"bucket s3://{name}: {'created' if created else 'already there'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
