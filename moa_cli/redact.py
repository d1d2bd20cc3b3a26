"""Keep secrets and untrusted server text out of everything moa prints or logs (stdlib only).

    register_secret(key)     remember a configured key (done when settings load)
    redact(text)             every remembered key, and URL credentials, replaced by "****"
    clean_server_text(text)  server-sent error text made safe to print: no terminal escape
                             or control sequences, an HTML page reduced to its <title>

Servers echo keys back ("Incorrect API key provided: sk-..."), and their error bodies are
untrusted bytes: both pass through here before they reach a terminal, a log or JSON.
"""

from __future__ import annotations

import base64
import html
import re
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "****"
_MIN_SECRET = 8  # shorter values would mask ordinary words ("none", the placeholder key for keyless servers)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()

# user:password@ in a URL (any scheme)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<cred>[^/@\s]+)@")
# CSI/OSC/other ESC sequences, then any remaining C0/C1 control characters except \t \n
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# invisible format characters that reorder or hide text on a terminal (bidi overrides, zero-width)
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_START = re.compile(r"^\s*(<!doctype html|<html|<head|<body|<\?xml|<h1)", re.IGNORECASE)


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` masks it from now on (process-wide)."""
    global _secrets
    if not value or len(value.strip()) < _MIN_SECRET:
        return
    with _lock:
        if value not in _secrets:
            # Longest first, so a key that contains another is masked whole.
            _secrets = tuple(sorted({*_secrets, value.strip()}, key=len, reverse=True))


def register_url_secrets(url: str | None) -> None:
    """Remember a URL's userinfo (`http://user:pass@host`): the password, `user:pass` and
    its base64 form, which httpx sends as `Authorization: Basic` (a server may echo it)."""
    if not url or "@" not in url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    user, password = parts.username, parts.password
    if user is None and password is None:
        return
    for raw in {(user or "", password or ""), (unquote(user or ""), unquote(password or ""))}:
        pair = f"{raw[0]}:{raw[1]}"
        register_secret(raw[1] or raw[0])
        register_secret(pair)
        register_secret(base64.b64encode(pair.encode()).decode())


def redact_value(value: Any) -> Any:
    """`value` with `redact` applied to every string in it (dicts, lists and tuples walked)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


def forget_secrets() -> None:
    """Drop every remembered secret (tests, and a library caller switching accounts)."""
    global _secrets
    with _lock:
        _secrets = ()


def mask_url(url: str) -> str:
    """`http://user:secret@host/v1` -> `http://****@host/v1`."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", url)


def redact(text: str) -> str:
    """`text` with every registered secret and any URL credentials replaced by ****."""
    if not text:
        return text
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return mask_url(text) if "@" in text else text


def clean_server_text(text: str, *, limit: int = 200) -> str:
    """Untrusted error text as one safe, short line: escapes stripped, HTML reduced, secrets masked."""
    if _HTML_START.match(text) or ("<html" in text[:500].lower()):
        title = _TITLE.search(text)
        text = f"HTML page: {html.unescape(title.group(1))}" if title else "an HTML page (no title)"
    text = _ESCAPES.sub("", text)
    text = _CONTROLS.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = " ".join(text.split())
    text = redact(text)
    return text[:limit] + ("…" if len(text) > limit else "")
