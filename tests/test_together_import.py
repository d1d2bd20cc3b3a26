"""The together SDK with its API resources loaded on demand (providers/together.py): the
chat resource alone at start-up, every other name the package's own, from any thread."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = """
import sys, threading
from moa_cli.providers.together import preload
preload()
loaded_early = sorted(m for m in sys.modules if m.startswith("together.resources."))
import together.resources as resources
errors = []
def get(name):
    try:
        getattr(resources, name)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=get, args=(n,)) for n in ("AsyncFilesResource", "AsyncModelsResource") * 4]
[t.start() for t in threads]
[t.join() for t in threads]
import together
client = together.AsyncTogether(api_key="x")
print(len(loaded_early), errors, type(client.chat.completions).__name__, type(client.models).__name__)
"""


def test_the_resources_load_once_for_every_thread_and_the_sdk_still_works() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    early, errors, chat, models = out.stdout.split(" ", 1)[0], *out.stdout.strip().split(" ", 1)[1].rsplit(" ", 2)
    assert int(early) < 10  # the chat resource, not the ~60 modules of every API
    assert errors == "[]"
    assert (chat, models) == ("AsyncCompletionsResource", "AsyncModelsResource")
