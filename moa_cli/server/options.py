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


def to_environment(options: ServeOptions, overrides: Mapping[str, Any], force_local: bool) -> str:
    """The JSON a worker's factory reads back (keys included: workers need them)."""
    return json.dumps({"options": asdict(options), "overrides": dict(overrides), "local": force_local})


def from_environment(env: Mapping[str, str] | None = None) -> tuple[ServeOptions, dict[str, Any], bool]:
    data = json.loads((os.environ if env is None else env)[ENV_VAR])
    raw = data["options"]
    tuples = {k: tuple(v) for k, v in raw.items() if isinstance(v, list)}
    return ServeOptions(**{**raw, **tuples}), dict(data["overrides"]), bool(data["local"])
