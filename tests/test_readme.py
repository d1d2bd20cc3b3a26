"""The README's Python API example runs as written, against the fake server."""

from __future__ import annotations

import contextlib
import io
import re

from tests.conftest import ROOT
from tests.fakes.llm_server import FakeLLMServer, Reply


def python_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


def test_readme_python_example_runs(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.set_default("judge", Reply(text="Because of Rayleigh scattering."))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(python_example(), "README.md", "exec"), {})
    printed = out.getvalue()
    assert printed.count("Because of Rayleigh scattering.") == 2
    assert "['alpha', 'beta', 'alpha', 'beta']" in printed
    assert "'total_tokens':" in printed
    # two turns of rounds=2: 2 x (2 refs x 2 layers + 1 aggregator)
    assert len(llm_server.requests) == 10
