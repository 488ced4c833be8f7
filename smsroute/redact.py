"""What a URL may show of itself: never its password (in reprs, log lines, errors)."""

from __future__ import annotations

import urllib.parse


def redact(url: str) -> str:
    """``url`` with its password (and user) replaced by ``***``.

    >>> redact("redis://:s3cret@redis.internal:6379/0")
    'redis://***@redis.internal:6379/0'
    """
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))
