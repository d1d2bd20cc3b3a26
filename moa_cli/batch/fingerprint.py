"""What decides a batch's answers: its fingerprint, made of the settings that decide (settings.py's
`Spec.decides`), where each model is sent, the format and the input's hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from moa_cli.providers.registry import split
from moa_cli.redact import mask_url
from moa_cli.settings import SPECS, Settings


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def answer_settings() -> list[str]:
    """The settings that decide an answer (settings.py marks them: `Spec.decides`), so a
    setting added there is covered; a text setting (the aggregator prompt) goes in as its hash."""
    return [n for n, spec in SPECS.items() if spec.decides is not None and spec.kind != "text"]


def settings_parts(settings: Settings) -> dict[str, Any]:
    """The part of the fingerprint the settings make: every setting that decides an answer,
    the aggregator prompt as its hash, and where each model is sent (`moa eval ifeval` names
    its work directory after these)."""
    parts: dict[str, Any] = {name: plain(getattr(settings, name)) for name in answer_settings()}
    for name, spec in SPECS.items():
        if spec.decides is not None and spec.kind == "text":
            parts[f"{name}_sha256"] = sha256_text(getattr(settings, name))
    parts["routes"] = routes(settings)
    return parts


def fingerprint_parts(settings: Settings, fmt: str, input_sha: str, fastchat_temperatures: bool) -> dict[str, Any]:
    """Everything that decides the answers; two runs with equal parts may share a sidecar."""
    parts = settings_parts(settings)
    parts.update(format=fmt, input_sha256=input_sha, fastchat_temperatures=fastchat_temperatures)
    return parts


def routes(settings: Settings) -> dict[str, list[str]]:
    """Where each model of the line-up is sent: provider, kind, endpoint (credentials masked)
    and model name. The same `-r m1` through another default provider or base URL is another
    model, so it must not share a sidecar."""
    out: dict[str, list[str]] = {}
    for spec in dict.fromkeys([*settings.references, settings.aggregator]):
        config, model = split(settings, spec)
        endpoint = config.base_url  # TOGETHER_BASE_URL for a together provider when set (config.load_settings)
        out[spec] = [config.name, config.kind, mask_url(endpoint or "default"), model]
    return out


def plain(value: Any) -> Any:
    """A setting's value as JSON keeps it (tuples as lists, anything odd as its text)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def fingerprint(parts: Mapping[str, Any]) -> str:
    return sha256_text(json.dumps(parts, sort_keys=True))
