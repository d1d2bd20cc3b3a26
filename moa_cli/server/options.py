"""What `moa serve` hands the app besides the settings (the line-up options come from those)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: Where `moa serve --workers N` puts the options for each worker's app factory.
ENV_VAR = "MOA_SERVE_CONFIG"
#: Requests bigger than this get a 413 (a long conversation is well under it).
DEFAULT_MAX_BODY = 8 * 1024 * 1024
#: An SSE comment at least this often while nothing else is sent.
HEARTBEAT_SECONDS = 10.0
#: The Host names a loopback bind answers to (any port), besides --allowed-host.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# The defaults of `moa serve`'s options (cli/serve.py repeats them as literals, so that
# `moa --help` imports no server module; tests/test_serve_limits.py checks they agree).
#: A connection must send its request headers within this many seconds (h11 has no limit).
HEADER_TIMEOUT = 10.0
#: ... and the whole request body within this many seconds of its headers (uvicorn has none).
BODY_TIMEOUT = 30.0
#: Idle keep-alive connections are closed after this many seconds (uvicorn's timeout_keep_alive).
KEEP_ALIVE_TIMEOUT = 5.0
#: Open connections plus requests in flight; beyond it uvicorn answers 503 (its limit_concurrency).
MAX_CONNECTIONS = 1000
#: The largest request head h11 buffers (its max_incomplete_event_size): 16 KiB, h11's own default.
MAX_HEADER_BYTES = 16 * 1024
#: With --allow-overrides: references one request may name, and upstream calls one turn may make.
MAX_REFERENCES = 8
MAX_UPSTREAM_CALLS = 32
#: A retried request within this many seconds reuses the proposals its failed try kept.
RETRY_WINDOW = 120.0
#: Failed tries kept for a retry (least recently kept dropped first).
RETRY_ENTRIES = 256


@dataclass(frozen=True, slots=True)
class ServeOptions:
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    cors_origins: tuple[str, ...] = ()
    max_concurrent: int | None = None  # turns running at once; None = no limit
    queue: int = 0  # turns waiting for a slot; beyond that, 429
    turn_timeout: float | None = None  # seconds for a whole request
    shutdown_timeout: float = 30.0
    passthrough: tuple[str, ...] = ()  # plain provider models, one direct call each
    allow_overrides: bool = False  # requests may change the line-up with {"moa": {...}}
    progress: Literal["off", "reasoning"] = "off"
    max_body: int = DEFAULT_MAX_BODY
    heartbeat: float = HEARTBEAT_SECONDS
    allowed_hosts: tuple[str, ...] | None = None  # Host values answered (any port); None: every one
    body_timeout: float = BODY_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    max_references: int = MAX_REFERENCES
    max_upstream_calls: int = MAX_UPSTREAM_CALLS
    retry_window: float = RETRY_WINDOW  # 0: retries run whole turns again
    retry_entries: int = RETRY_ENTRIES
    quiet: bool = False  # no start-up or access lines on stderr


def to_environment(options: ServeOptions, overrides: Mapping[str, Any], force_local: bool) -> str:
    """The JSON a worker's factory reads back (keys included: workers need them)."""
    return json.dumps({"options": asdict(options), "overrides": dict(overrides), "local": force_local})


def from_environment(env: Mapping[str, str] | None = None) -> tuple[ServeOptions, dict[str, Any], bool]:
    data = json.loads((os.environ if env is None else env)[ENV_VAR])
    raw = data["options"]
    tuples = {k: tuple(v) for k, v in raw.items() if isinstance(v, list)}
    return ServeOptions(**{**raw, **tuples}), dict(data["overrides"]), bool(data["local"])
