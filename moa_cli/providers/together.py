"""Together AI through the `together` SDK: the only module that imports it."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

from moa_cli.providers.bounded import sdk_http_client
from moa_cli.providers.chat_api import ChatAPIProvider, watch_response


def _resources_on_demand() -> None:
    """Let the SDK import `together.resources.chat` without the other 30-odd API resources.

    `client.chat` imports `together.resources.chat`, and Python runs the package's
    `__init__` first, which imports every resource (fine-tuning, clusters, beta.jig, ...):
    ~290 modules and 0.1-0.3 s of start-up before the first request, for a command that
    only chats. So the package is registered unexecuted, with its directory as its path:
    submodules load as they are imported, and any other name taken from the package itself
    runs its real `__init__` then, once, as a plain import would have. Should the SDK's
    layout change, this does nothing and the plain import happens.
    """
    if "together.resources" in sys.modules:
        return
    top = importlib.util.find_spec("together")  # a top-level spec: nothing is imported
    if top is None or not top.submodule_search_locations:
        return
    folder = Path(top.submodule_search_locations[0]) / "resources"
    if not (folder / "__init__.py").is_file() or not (folder / "chat").is_dir():
        return
    spec = importlib.util.spec_from_file_location(
        "together.resources", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    lock = threading.RLock()  # other threads wait while the package runs; its own code may re-enter
    state = {"running": False, "done": False}

    def load_all(name: str) -> Any:
        with lock:
            if not state["done"] and not state["running"]:
                state["running"] = True
                try:
                    loader.exec_module(module)
                except BaseException:
                    sys.modules.pop("together.resources", None)  # as a failed import would
                    raise
                finally:
                    state["running"] = False
                state["done"] = True
                if vars(module).get("__getattr__") is load_all:
                    del vars(module)["__getattr__"]
        if name in vars(module):
            return vars(module)[name]
        raise AttributeError(f"module 'together.resources' has no attribute {name!r}")

    vars(module)["__getattr__"] = load_all  # a module's __getattr__: PEP 562
    sys.modules["together.resources"] = module


def _import_together() -> Any:
    """The SDK, with its API resources imported on demand (see above)."""
    _resources_on_demand()
    import together

    if "resources" not in vars(together):  # a package found in sys.modules is not bound to its parent
        together.resources = sys.modules["together.resources"]
    return together


def preload() -> None:
    """Import the SDK and its chat resource (~0.4 s), e.g. before the event loop starts."""
    _import_together()
    import together.resources.chat  # noqa: F401


class TogetherProvider(ChatAPIProvider):
    kind = "together"
    # The SDK has no stream_options argument; the API accepts it in the body.
    usage_request: ClassVar[dict[str, Any]] = {"extra_body": {"stream_options": {"include_usage": True}}}
    # The SDK's base URL is the host; `client.models.list()` in together 3.x lists a
    # project's own uploads, while the catalogue chat completions accept is /v1/models.
    models_path = "/v1/models"

    def _make_client(self) -> Any:
        together = _import_together()  # deferred: importing the SDK costs ~0.35 s

        return together.AsyncTogether(
            api_key=self._api_key,
            base_url=self._base_url,
            timeout=self._timeout,
            max_retries=self._retries,
            http_client=sdk_http_client(together.DefaultAsyncHttpxClient, [watch_response]),
        )
