"""Which module may import which (see STYLE.md): the engine knows nothing of terminals or HTTP."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "moa_cli"

# module (relative path) -> top-level packages it must never import, even lazily
FORBIDDEN: dict[str, set[str]] = {
    "types.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp"},
    "events.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp"},
    "errors.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp"},
    "config.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "llama_cpp"},
    "engine.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "llama_cpp", "sqlite3"},
    "api.py": {"rich", "prompt_toolkit", "typer", "together", "openai"},
    "render.py": {"prompt_toolkit", "typer", "together", "openai", "httpx"},
}


def imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_layering(module: str) -> None:
    assert not imported_packages(PKG / module) & FORBIDDEN[module]


def test_only_the_together_provider_imports_together() -> None:
    importers = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if "together" in imported_packages(p)}
    assert importers == {"providers/together.py"}


def test_nothing_imports_the_cli() -> None:
    for path in PKG.rglob("*.py"):
        if "cli" in path.relative_to(PKG).parts[:1] or path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("moa_cli.cli"), path


def test_help_path_imports_no_heavy_package() -> None:
    """`moa --help` must not pay for the SDKs, the engine or the REPL."""
    code = (
        "import sys, contextlib, io; sys.argv=['moa','ask','--help']\n"
        "from moa_cli.cli.app import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): main()\n"
        "heavy = [m for m in ('together','openai','httpx','loguru','moa_cli.engine','prompt_toolkit','llama_cpp') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
