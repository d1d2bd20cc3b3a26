"""Which module may import which (see STYLE.md): the engine knows nothing of terminals or HTTP."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.helpers import parse_source

PKG = Path(__file__).resolve().parent.parent / "moa_cli"

# module (relative path) -> top-level packages it must never import, even lazily
FORBIDDEN: dict[str, set[str]] = {
    "types.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp"},
    "events.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp"},
    "errors.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp"},
    # Process signals for every front end (cli, the REPL's line mode): stdlib only.
    # Stop sequences, for the server and the local runtime alike: stdlib only.
    "stops.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp", "sqlite3"},
    "signals.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp", "sqlite3"},
    # Whether colour is off (NO_COLOR): asked by the logger and the REPL before rich loads, so stdlib only.
    "terminal.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp", "sqlite3"},
    "config.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "llama_cpp"},
    # Fitting prompts to context windows: stdlib and moa's value types only (the engine's helper).
    "fitting.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp", "sqlite3"},
    "engine.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "llama_cpp", "sqlite3"},
    # Agents' turns: tool calls (stdlib only, the engine imports it) and the checked turn (jsonschema).
    "tools.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp", "sqlite3"},
    "structured.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "llama_cpp", "sqlite3"},
    "api.py": {"rich", "prompt_toolkit", "typer", "together", "openai"},
    # batch: formats, sidecar and manifest only; its progress bar is cli/batch_cmd.py's business.
    **{
        f"batch/{name}": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "llama_cpp"}
        for name in (
            "__init__.py",
            "fingerprint.py",
            "formats.py",
            "job.py",
            "manifest.py",
            "outcome.py",
            "pacing.py",
            "reuse.py",
            "run.py",
            "sidecar.py",
        )
    },
    # render/: rich views; no prompt_toolkit, Typer, SDK or HTTP (trace.py: no sqlite3 either).
    **{
        f"render/{name}": {"prompt_toolkit", "typer", "together", "openai", "httpx", "llama_cpp", "sqlite3"}
        for name in ("__init__.py", "answer.py", "blocks.py", "console.py", "progress.py", "turn.py")
    },
    "transcript.py": {
        "rich",
        "prompt_toolkit",
        "typer",
        "together",
        "openai",
        "httpx",
        "loguru",
        "llama_cpp",
        "sqlite3",
    },
    "conversation.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp"},
    # The conversation log: the store is sqlite3 and plain records; pricing fetches catalogues
    # with httpx only in `refresh`; the trace is data, drawn by render/trace.py with rich.
    **{
        f"store/{name}": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp"}
        for name in ("__init__.py", "records.py", "schema.py", "db.py", "writer.py")
    },
    "pricing.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "loguru", "llama_cpp"},
    "trace.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "loguru", "llama_cpp", "sqlite3"},
    "render/trace.py": {"prompt_toolkit", "typer", "together", "openai", "httpx", "llama_cpp", "sqlite3"},
    "recorder.py": {"rich", "prompt_toolkit", "typer", "together", "openai", "httpx", "llama_cpp", "sqlite3"},
    # The server (ASGI, Starlette) may use the engine, the API and the settings, but no terminal
    # code, no Typer and no SDK: `moa serve` itself is cli/serve.py.
    **{
        f"server/{name}": {"rich", "prompt_toolkit", "typer", "together", "openai", "llama_cpp"}
        for name in (
            "__init__.py",
            "app.py",
            "auth.py",
            "connections.py",
            "errors.py",
            "guard.py",
            "lifecycle.py",
            "limits.py",
            "models.py",
            "options.py",
            "report.py",
            "responses.py",
            "retries.py",
            "schema.py",
            "sse.py",
            "turns.py",
        )
    },
    # The REPL may use rich, prompt_toolkit, the engine and the API, but no SDK or Typer:
    # the command line is cli/chat.py's business.
    **{
        f"repl/{name}": {"typer", "together", "openai", "httpx", "llama_cpp"}
        for name in ("__init__.py", "session.py", "slash.py", "loop.py", "lines.py")
    },
}


def imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(parse_source(path.read_text())):
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


def moa_imports(path: Path) -> set[str]:
    """Every moa_cli module `path` imports, at any depth, as dotted names."""
    names: set[str] = set()
    for node in ast.walk(parse_source(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("moa_cli"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moa_cli"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_repl_module_has_rules() -> None:
    assert {f"repl/{p.name}" for p in (PKG / "repl").glob("*.py")} <= set(FORBIDDEN)


def test_every_render_module_has_rules() -> None:
    assert {f"render/{p.name}" for p in (PKG / "render").glob("*.py")} <= set(FORBIDDEN)


def test_every_store_module_has_rules() -> None:
    assert {f"store/{p.name}" for p in (PKG / "store").glob("*.py")} <= set(FORBIDDEN)


def test_every_batch_module_has_rules() -> None:
    assert {f"batch/{p.name}" for p in (PKG / "batch").glob("*.py")} <= set(FORBIDDEN)


def test_every_server_module_has_rules() -> None:
    assert {f"server/{p.name}" for p in (PKG / "server").glob("*.py")} <= set(FORBIDDEN)


def test_only_the_serve_command_imports_the_server() -> None:
    for path in PKG.rglob("*.py"):
        if path.relative_to(PKG).parts[0] in ("server",) or path.relative_to(PKG).as_posix() == "cli/serve.py":
            continue
        for name in moa_imports(path):
            assert not (name == "moa_cli.server" or name.startswith("moa_cli.server.")), path


def test_the_serve_command_loads_no_server_at_import() -> None:
    """`moa --help` imports cli/serve.py: Starlette and uvicorn must not come with it."""
    loaded = module_level_imports(PKG / "cli" / "serve.py")
    assert not {n for n in loaded if n.split(".")[0] in ("starlette", "uvicorn") or n.startswith("moa_cli.server")}


def test_nothing_imports_the_cli() -> None:
    for path in PKG.rglob("*.py"):
        if "cli" in path.relative_to(PKG).parts[:1] or path.name == "__main__.py":
            continue
        for name in moa_imports(path):
            assert not (name == "moa_cli.cli" or name.startswith("moa_cli.cli.")), path


def test_only_the_cli_imports_the_repl() -> None:
    for path in PKG.rglob("*.py"):
        if path.relative_to(PKG).parts[0] in ("cli", "repl"):
            continue
        for name in moa_imports(path):
            assert not (name == "moa_cli.repl" or name.startswith("moa_cli.repl.")), path


def module_level_imports(path: Path) -> set[str]:
    """What importing `path` imports: top-level statements, not `if TYPE_CHECKING:` blocks."""
    names: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(parse_source(path.read_text()).body)
    return names


def test_the_chat_command_loads_the_repl_only_when_it_runs() -> None:
    """`moa --help` imports cli/chat.py: the REPL and prompt_toolkit must not come with it."""
    loaded = module_level_imports(PKG / "cli" / "chat.py")
    assert not {n for n in loaded if n.split(".")[0] == "prompt_toolkit" or n.startswith("moa_cli.repl")}


def test_help_path_imports_no_heavy_package() -> None:
    """`moa --help` must not pay for the SDKs, the engine or the REPL."""
    code = (
        "import sys, contextlib, io; sys.argv=['moa','ask','--help']\n"
        "from moa_cli.cli.app import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): main()\n"
        "heavy = [m for m in ('together','openai','httpx','loguru','moa_cli.engine','moa_cli.repl','prompt_toolkit','llama_cpp') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_the_store_imports_only_plain_values_and_errors() -> None:
    """store/ may use types, errors and sqlite3: no settings, engine, providers or terminal."""
    for path in (PKG / "store").glob("*.py"):
        imported = {n.rsplit(".", 1)[0] if n.count(".") > 1 else n for n in moa_imports(path)}
        assert {n for n in imported if not n.startswith("moa_cli.store")} <= {"moa_cli.errors", "moa_cli.types"}, path
    for module in ("engine.py", "api.py", *(f"render/{p.name}" for p in (PKG / "render").glob("*.py"))):
        assert not {n for n in moa_imports(PKG / module) if n.startswith("moa_cli.store")}, module


def env_reads(path: Path) -> set[str]:
    """The environment variables `path` reads by name: `env.get("X")`, `os.environ["X"]`, `os.getenv("X")`."""
    names: set[str] = set()
    for node in ast.walk(parse_source(path.read_text())):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            owner = ast.unparse(node.func.value)
            if (node.func.attr == "get" and owner.endswith(("env", "environ"))) or node.func.attr == "getenv":
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith(("env", "environ")):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
    return names


def test_moas_environment_variables_are_read_in_one_place() -> None:
    """config.py reads moa's variables (MOA_*, TOGETHER_BASE_URL, the keys); the rest take the
    settings. The terminal's own conventions (NO_COLOR, TERM) are read where output is drawn."""
    readers = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if env_reads(p) - {"NO_COLOR", "TERM"}}
    assert readers <= {"config.py"}


def test_no_color_is_read_in_one_place() -> None:
    """terminal.colour_off reads NO_COLOR; the logger, the REPL and the rich consoles ask it
    (rich and prompt_toolkit are told, rather than left to read the variable themselves)."""
    readers = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if "NO_COLOR" in env_reads(p)}
    assert readers == {"terminal.py"}
    askers = {
        p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if "moa_cli.terminal.colour_off" in moa_imports(p)
    }
    assert {"diagnostics.py", "render/console.py", "repl/loop.py", "repl/session.py"} <= askers


def test_no_module_imports_another_modules_private_name() -> None:
    """A name with a leading underscore is its module's own: another module that needs it
    needs it public."""
    taken = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(parse_source(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moa_cli"):
                taken += [
                    f"{path.relative_to(PKG)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name[0] == "_" and not a.name.endswith("__")
                ]
    assert taken == []


def test_one_atomic_writer() -> None:
    """Files are written whole by files.write_atomic; ifeval's checker data is a directory,
    moved into place once it is complete."""
    renamers = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if "os.replace(" in p.read_text()}
    assert renamers <= {"files.py", "evals/ifeval.py"}
