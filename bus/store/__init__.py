"""Object stores chosen by URL: `file:///dir` or `s3://bucket/prefix?endpoint=…&region=…`."""

from __future__ import annotations

from typing import Any

from bus.errors import ConfigError
from bus.store.base import ObjectInfo, ObjectStore, check_key
from bus.urls import local_path, parse_url

__all__ = ["ObjectInfo", "ObjectStore", "check_key", "open_store"]


def open_store(url: str, **options: Any) -> ObjectStore:
    """Open the store at `url`; keyword options override the URL's query (credentials, sizes)."""
    parsed = parse_url(url, schemes=("file", "s3"))
    if parsed.scheme == "file":
        from bus.store.file import FileStore

        return FileStore(local_path(parsed))
    from bus.store.s3 import S3Store  # boto3 is imported only when S3 is used

    if not parsed.host:
        raise ConfigError(f"{parsed.safe}: no bucket given")
    unknown = sorted(set(parsed.query) - {"endpoint", "region"})
    if unknown:
        raise ConfigError(f"{parsed.safe}: unknown option(s) {unknown}; known: endpoint, region")
    settings: dict[str, Any] = {
        "endpoint": parsed.option("endpoint"),
        "region": parsed.option("region"),
    }
    settings.update(options)
    return S3Store(parsed.netloc, parsed.path, **settings)
