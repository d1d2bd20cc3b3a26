"""Bearer keys: `Authorization: Bearer KEY`, compared in constant time, never logged."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from moa_cli.server.errors import ApiError


class Keys:
    """The keys a client may present; no keys means auth is off."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"Keys({len(self._keys)} keys)"  # never the keys themselves

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise ApiError(401) unless auth is off or the request carries one of the keys."""
        if not self._keys:
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorised("no API key: send Authorization: Bearer KEY")
        given = token.strip().encode()
        # Compare with every key (no early exit), so timing says nothing about which matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise _unauthorised("invalid API key")


def _unauthorised(message: str) -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")
