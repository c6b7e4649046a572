"""`s3://bucket/prefix`: the object store on S3 or any S3-compatible server, through boto3.

boto3 lives only here. Large objects go up in parts (`TransferConfig`), and devices get
presigned URLs instead of credentials.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bus.errors import ConfigError, ObjectNotFound, ObjectStoreError
from bus.store.base import ObjectInfo, check_key, check_prefix

MiB = 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    """Keys live under `prefix` in `bucket`; two stores with different prefixes never collide."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        multipart_threshold: int = 8 * MiB,
        multipart_chunksize: int = 8 * MiB,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = _client(self.bucket, self.prefix, endpoint, region, access_key, secret_key)
        if multipart_chunksize < 5 * MiB:
            raise ConfigError(
                f"s3://{bucket}/{self.prefix}: multipart_chunksize {multipart_chunksize} is below "
                "S3's 5 MiB minimum part size"
            )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _error(self, operation: str, key: str, exc: Exception) -> ObjectStoreError:
        where = f"s3://{self.bucket}/{self.prefix}{key}"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                return ObjectNotFound(f"no object at {where}")
            return ObjectStoreError(f"{operation} {where} failed: {code} {exc}")
        return ObjectStoreError(f"{operation} {where} failed: {exc}")

    def put(
        self, key: str, data: bytes | BinaryIO, *, content_type: str | None = None
    ) -> ObjectInfo:
        """Upload in parts above the multipart threshold; hash while streaming, not after."""
        stream = _HashingReader(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data)
        extra = {"ContentType": content_type} if content_type else None
        try:
            self._client.upload_fileobj(
                stream, self.bucket, self._key(key), ExtraArgs=extra, Config=self._transfer
            )
            # upload_fileobj hides the response; one HEAD gives the ETag callers may compare.
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error("put", key, exc) from exc
        etag = str(head.get("ETag", "")).strip('"') or None
        return ObjectInfo(key, stream.size, stream.digest.hexdigest(), etag=etag)

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            body: bytes = response["Body"].read()
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error("get", key, exc) from exc
        return body

    def get_to_file(self, key: str, path: Path) -> ObjectInfo:
        try:
            self._client.download_file(
                self.bucket, self._key(key), str(path), Config=self._transfer
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error("get", key, exc) from exc
        digest = hashlib.sha256()
        try:
            with path.open("rb") as handle:
                while chunk := handle.read(MiB):
                    digest.update(chunk)
        except OSError as exc:
            raise self._error("get", key, exc) from exc
        return ObjectInfo(key, path.stat().st_size, digest.hexdigest())

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            error = self._error("head", key, exc)
            if isinstance(error, ObjectNotFound):
                return False
            raise error from exc
        return True

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error("delete", key, exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + check_prefix(prefix)
            )
            for page in pages:
                keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", prefix, exc) from exc
        return sorted(keys)

    def presign_get(self, key: str, expires_s: int = 3600) -> str:
        return self._presign("get_object", key, expires_s)

    def presign_put(self, key: str, expires_s: int = 3600) -> str:
        return self._presign("put_object", key, expires_s)

    def _presign(self, method: str, key: str, expires_s: int) -> str:
        try:
            url: str = self._client.generate_presigned_url(
                method, Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("presign", key, exc) from exc
        return url

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def _client(
    bucket: str,
    prefix: str,
    endpoint: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
) -> Any:
    """The one place a boto3 client is configured; unset keys fall back to boto3's chain."""
    try:
        return boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            # Path-style addressing works with every S3-compatible server and with AWS.
            config=Config(
                signature_version="s3v4",  # SigV2 presigned PUTs break on a Content-Type header
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
            ),
        )
    except (BotoCoreError, ValueError) as exc:
        raise ConfigError(
            f"s3://{bucket}/{prefix}: cannot build an S3 client "
            f"(endpoint={endpoint!r}, region={region!r}): {exc}"
        ) from exc


class _HashingReader:
    """Hashes and counts what boto3 reads, so `put` returns the sha256 without a second pass."""

    def __init__(self, inner: BinaryIO | io.BytesIO) -> None:
        self._inner = inner
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._inner.read(size)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk
