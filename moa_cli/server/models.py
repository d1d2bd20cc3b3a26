"""The models a server answers for: `moa` (the line-up it was started with), every named
line-up that can run here, and each `--passthrough` provider model (one direct call).

The line-up options given to `moa serve` (references, aggregator, rounds, sampling) shape
`moa` only; a named line-up is served as its table defines it, with the server-wide
settings (timeouts, retries, providers) of the command. A named line-up that cannot run
here (a missing key, no [local] extra) is left out with one warning at start-up.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass
from typing import Any

from moa_cli.config import Settings, load_settings
from moa_cli.diagnostics import logger
from moa_cli.errors import ConfigError, MissingKeyError
from moa_cli.providers.registry import check_lineup, split
from moa_cli.server.errors import not_found
from moa_cli.settings import SPECS

DEFAULT_MODEL = "moa"


@dataclass(frozen=True, slots=True)
class Served:
    """One model id: a line-up (`settings`) or a passthrough provider model (`spec`)."""

    id: str
    settings: Settings | None = None
    spec: str | None = None
    owned_by: str = "moa"
    description: str | None = None

    def entry(self, created: int) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.id, "object": "model", "created": created, "owned_by": self.owned_by}
        if self.settings is not None:
            s = self.settings
            item["moa"] = {
                "lineup": s.lineup,
                "references": list(s.references),
                "aggregator": s.aggregator,
                "rounds": s.rounds,
                "description": self.description,
            }
        else:
            item["moa"] = {"passthrough": self.spec}
        return item


class Catalogue:
    def __init__(self, settings: Settings, passthrough: tuple[str, ...] = ()) -> None:
        self.created = int(time.time())
        self.models: dict[str, Served] = {
            DEFAULT_MODEL: Served(DEFAULT_MODEL, settings, description=self._about(settings))
        }
        shared = {k: v for k, v in settings.overrides.items() if not SPECS[k].lineup and k != "lineup"}
        for name in settings.lineups:
            if name == DEFAULT_MODEL:
                logger.warning("line-up {!r} is not served under its own name: {!r} is the default one", name, name)
                continue
            try:
                lineup = load_settings({**shared, "lineup": name}, settings.env)
                check_lineup(lineup)
            except MissingKeyError as exc:
                # The key's own hint says "or use --local", which is what runs `moa` when it
                # is the offline line-up: only the key to set is news.
                reason = str(exc).split(" (or use --local")[0] if settings.lineup == "local" else str(exc)
                logger.warning("line-up {} is not served: {}", name, reason)
                continue
            except ConfigError as exc:
                logger.warning("line-up {} is not served: {}", name, exc)
                continue
            self.models[name] = Served(name, lineup, description=self._about(lineup))
        for spec in passthrough:
            if spec in self.models:
                raise ConfigError(f"--passthrough {spec}: a line-up is already served under that id")
            check_lineup(settings, [spec])
            provider, _ = split(settings, spec)
            self.models[spec] = Served(spec, spec=spec, owned_by=provider.name)

    @staticmethod
    def _about(settings: Settings) -> str | None:
        table = settings.lineups.get(settings.lineup or "", {})
        description = table.get("description")
        return description if isinstance(description, str) else None

    def get(self, model: str) -> Served:
        served = self.models.get(model)
        if served is None:
            close = difflib.get_close_matches(model, list(self.models), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise not_found(f"the model {model!r} does not exist{hint} (GET /v1/models lists them)", "model_not_found")
        return served

    def listing(self) -> dict[str, Any]:
        return {"object": "list", "data": [m.entry(self.created) for m in self.models.values()]}
