"""A provider's API keys and which one the next request uses.

A provider kind says which header carries its key (`Provider.key_header`); the pool holds
that header prebuilt for each key, so a request pays one pick and one header append.
"""

from __future__ import annotations

from collections.abc import Iterable


class Key:
    """One secret and its prebuilt header value."""

    __slots__ = ("header_value", "secret")

    def __init__(self, secret: str, header_format: str) -> None:
        self.secret = secret
        self.header_value = header_format.format(secret)


class KeyPool:
    """The keys of one provider; `pick` is the key the next request sends."""

    __slots__ = ("header_name", "keys")

    def __init__(self, secrets: Iterable[str], header: tuple[str, str] | None) -> None:
        self.header_name = header[0] if header is not None else ""
        fmt = header[1] if header is not None else "{}"
        self.keys = tuple(Key(secret, fmt) for secret in secrets if secret)

    def pick(self) -> Key | None:
        """The key for the next request; None for a provider without keys."""
        return self.keys[0] if self.keys else None
