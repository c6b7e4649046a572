"""Parse the backend URLs that pick a transport (`mqtt://`, `kafka://`, `sqlite://`, `s3://`, `file://`).

Every adapter reads its URL through here so that a bad URL fails the same way everywhere: a
`ConfigError` naming the URL (with any password masked) and what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from bus.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class ParsedUrl:
    """The parts of a backend URL, already unquoted."""

    scheme: str
    host: str | None
    port: int | None
    username: str | None
    password: str | None
    path: str
    netloc: str = ""
    query: dict[str, str] = field(default_factory=dict)
    raw: str = ""

    @property
    def safe(self) -> str:
        """The URL with its password masked, for messages and logs."""
        return mask_password(self.raw)

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name, default)

    def int_option(self, name: str, default: int) -> int:
        return self._converted(name, default, int, "an integer")

    def float_option(self, name: str, default: float) -> float:
        return self._converted(name, default, float, "a number")

    def _converted(self, name: str, default: T, convert: Callable[[str], T], what: str) -> T:
        value = self.query.get(name)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as exc:
            message = f"{self.safe}: option {name!r} must be {what}, got {value!r}"
            raise ConfigError(message) from exc

    def bool_option(self, name: str, default: bool) -> bool:
        value = self.query.get(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{self.safe}: option {name!r} must be true or false, got {value!r}")


def mask_password(url: str) -> str:
    """Replace the password in `url` with `***` so it can be printed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def parse_url(url: str, *, schemes: tuple[str, ...]) -> ParsedUrl:
    """Split `url` and check its scheme is one of `schemes`."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"expected a URL with scheme {'|'.join(schemes)}://, got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{mask_password(url)}: not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        wanted = ", ".join(f"{s}://" for s in schemes)
        raise ConfigError(f"{mask_password(url)}: unsupported scheme {scheme!r}; expected {wanted}")
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in query:
            raise ConfigError(f"{mask_password(url)}: option {key!r} given twice")
        query[key] = value
    return ParsedUrl(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        path=unquote(parts.path),
        netloc=unquote(parts.netloc),
        query=query,
        raw=url,
    )


def local_path(parsed: ParsedUrl) -> Path:
    """The filesystem path of a `file://` or `sqlite://` URL.

    `scheme:///abs/path` is absolute; `scheme://rel/path` is relative to the working directory,
    which is what people type for a quick local run.
    """
    text = parsed.netloc + parsed.path
    if not text:
        raise ConfigError(f"{parsed.safe}: no path given")
    return Path(text)
