"""The offline default on every CPU: the repack decision, the crash notice, and the pinned driver.

The decision takes the CPU's flags as an argument, so an AMX CPU and one without are both
decided here whatever this machine is. The crash notice is shown by a child process that
faults for real (a signal raised from native code, on a thread, as llama.cpp's own crash
arrives). The driver checks run against the installed llama-cpp-python.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from moa_cli.config import load_settings
from moa_cli.errors import ConfigError
from moa_cli.providers import llama_runtime
from moa_cli.providers.cpu import choose_repack, cpu_flags
from tests.fakes.helpers import parse_source

ROOT = Path(__file__).resolve().parent.parent
SAPPHIRE_RAPIDS = {"sse4_2", "avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8"}
ZEN4 = {"sse4_2", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
HASWELL = {"sse4_2", "avx", "avx2", "fma"}
THIS_CPU_HAS_AMX = bool(cpu_flags() & {"amx_tile", "amx_int8"})


# ----------------------------------------------------------------------- the decision


def test_repacking_is_off_on_an_amx_cpu_and_says_why() -> None:
    choice = choose_repack(SAPPHIRE_RAPIDS)
    assert choice.enabled is False
    assert "AMX" in choice.reason and "amx_tile" in choice.reason
    assert "ggml-org/llama.cpp#20824" in choice.reason and "MOA_LOCAL_REPACK=1" in choice.reason


@pytest.mark.parametrize("flags", [ZEN4, HASWELL, set()], ids=["avx512-no-amx", "avx2", "unknown-cpu"])
def test_repacking_keeps_llama_cpp_s_default_without_amx(flags: set[str]) -> None:
    choice = choose_repack(flags)
    assert choice.enabled is True and "no AMX" in choice.reason


@pytest.mark.parametrize("forced", [True, False])
@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, HASWELL], ids=["amx", "avx2"])
def test_a_forced_setting_wins_over_the_cpu(flags: set[str], forced: bool) -> None:
    choice = choose_repack(flags, forced, "MOA_LOCAL_REPACK=x")
    assert choice.enabled is forced
    assert choice.reason == f"{'on' if forced else 'off'}, as MOA_LOCAL_REPACK=x says"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 amx_tile amx_int8\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "amx_tile", "amx_int8"}
    assert cpu_flags(arm) == {"fp", "asimd", "sve"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


# ----------------------------------------------------------------------- the setting


def _local(env: dict[str, str]) -> Any:
    return load_settings(env=env).providers["local"]


def test_the_config_file_and_the_variable_force_repacking(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[providers.local]\nkind = 'local'\nrepack = true\n")
    from_file = _local({"MOA_HOME": str(tmp_path)})
    assert from_file.repack is True and "repack in" in from_file.repack_source
    overridden = _local({"MOA_HOME": str(tmp_path), "MOA_LOCAL_REPACK": "off"})
    assert overridden.repack is False and overridden.repack_source == "MOA_LOCAL_REPACK=off"
    auto = _local({"MOA_HOME": str(tmp_path), "MOA_LOCAL_REPACK": "auto"})
    assert auto.repack is None  # auto: the CPU decides, whatever the file said


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        ("[providers.local]\nrepack = 'yes'\n", {}, "repack must be true or false"),
        ("[providers.vllm]\nbase_url = 'http://x/v1'\nrepack = false\n", {}, "repack is for local providers"),
        ("", {"MOA_LOCAL_REPACK": "maybe"}, "invalid MOA_LOCAL_REPACK='maybe'"),
    ],
    ids=["not-a-bool", "not-local", "bad-variable"],
)
def test_a_bad_repack_setting_is_one_line(tmp_path: Path, config: str, env: dict[str, str], message: str) -> None:
    (tmp_path / "config.toml").write_text(config)
    with pytest.raises(ConfigError, match=message):
        load_settings(env={"MOA_HOME": str(tmp_path), **env})


def test_moa_models_local_shows_the_choice_and_the_driver(moa, tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs the [local] extra")
    ran = moa(["models", "--local", "--json"])
    assert ran.returncode == 0, ran.stderr
    (listing,) = json.loads(ran.stdout)["providers"]
    assert listing["kind"] == "local"
    expected = choose_repack(cpu_flags())
    assert listing["runtime"]["repack"] == expected.reason
    assert listing["runtime"]["llama-cpp-python"].startswith(f"{llama_cpp.__version__}, its bindings match")
    forced = moa(["models", "--local"], env={"MOA_LOCAL_REPACK": "0"})
    assert "repack: off, as MOA_LOCAL_REPACK=0 says" in forced.stdout


# ----------------------------------------------------------------------- a native crash


def _crash_child(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGILL, signal.SIGABRT])
def test_a_native_crash_on_a_worker_thread_says_so_in_one_line(signum: int) -> None:
    # The signal is raised by C code on a thread that released the interpreter lock, as
    # llama.cpp's threads fault inside llama_decode.
    child = _crash_child(
        f"""
        import ctypes, threading, time
        from moa_cli.providers import crash
        assert crash.install_notice(True)
        libc = ctypes.CDLL(None)
        worker = threading.Thread(target=getattr(libc, "raise"), args=({int(signum)},))
        worker.start()
        worker.join()
        time.sleep(5)
        print("survived")
        """
    )
    assert child.returncode == -signum  # the process still dies of the signal, as the shell expects
    assert "survived" not in child.stdout
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, child.stderr
    assert lines[0].startswith(f"moa: the local model crashed inside llama.cpp ({signal.Signals(signum).name}")
    assert "weight repacking on" in lines[0] and "MOA_LOCAL_REPACK=0" in lines[0]
    assert "moa chat -c" in lines[0]


@pytest.mark.skipif(not THIS_CPU_HAS_AMX, reason="needs a CPU with AMX, where llama.cpp's repacking crashes")
@pytest.mark.local
def test_forcing_repacking_on_amx_crashes_with_the_notice_and_the_log_is_kept(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="needs the [local] extra")
    env = {"MOA_HOME": str(tmp_path), "TOGETHER_API_KEY": "", "NO_COLOR": "1", "CI": "true"}
    base = [sys.executable, "-m", "moa_cli", "ask", "--max-tokens", "8"]

    def ask(question: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, question],
            cwd=ROOT,
            env={**os.environ, **env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    first = ask("Say one word.")  # the default: repacking off on this CPU
    assert first.returncode == 0 and first.stdout.strip(), first.stderr
    crashed = ask("And another.", MOA_LOCAL_REPACK="1")
    assert crashed.returncode in (-signal.SIGILL, -signal.SIGSEGV), crashed.returncode
    notices = [line for line in crashed.stderr.splitlines() if "crashed inside llama.cpp" in line]
    assert len(notices) == 1 and "weight repacking on" in notices[0] and "MOA_LOCAL_REPACK=0" in notices[0]
    kept = subprocess.run(
        [sys.executable, "-m", "moa_cli", "logs", "--json"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert kept.returncode == 0 and "Say one word." in kept.stdout


# ----------------------------------------------------------------------- the driver


def test_the_installed_llama_cpp_python_is_the_pinned_one_and_matches_the_driver() -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs the [local] extra")
    assert llama_cpp.__version__ == llama_runtime.PINNED_VERSION
    assert llama_runtime.check_runtime() is None
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"llama-cpp-python=={llama_runtime.PINNED_VERSION}"' in pyproject


def test_every_bound_function_has_the_arity_the_driver_passes() -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs the [local] extra")
    for name, arity in llama_runtime.DRIVER_FUNCTIONS.items():
        assert len(getattr(llama_cpp, name).argtypes) == arity, name


def test_every_call_in_the_driver_passes_the_declared_arity() -> None:
    """The table is what the code does: each `llama.X(...)` call in llama_runtime.py and local.py
    passes exactly DRIVER_FUNCTIONS[X] arguments, and every entry is used."""
    seen: dict[str, int] = {}
    for module in ("llama_runtime.py", "local.py"):
        tree = parse_source((ROOT / "moa_cli" / "providers" / module).read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("llama_")
                and node.func.attr in llama_runtime.DRIVER_FUNCTIONS
            ):
                seen[node.func.attr] = len(node.args)
                assert len(node.args) == llama_runtime.DRIVER_FUNCTIONS[node.func.attr], (module, node.func.attr)
    # llama_sampler_sample is also called through a local alias in the decoding step.
    assert set(llama_runtime.DRIVER_FUNCTIONS) - set(seen) <= {"llama_sampler_sample"}


def _stand_in(**changes: Any) -> SimpleNamespace:
    """A llama_cpp look-alike with every function and struct the driver needs, then `changes`."""
    module = SimpleNamespace(__version__="0.3.99")
    for name, arity in llama_runtime.DRIVER_FUNCTIONS.items():
        setattr(module, name, SimpleNamespace(argtypes=[ctypes.c_int] * arity))
    for struct, fields in llama_runtime.DRIVER_FIELDS.items():
        setattr(module, struct, SimpleNamespace(_fields_=[(f, ctypes.c_int) for f in fields]))
    for name, value in changes.items():
        setattr(module, name, value)
    return module


def test_a_binding_whose_signature_changed_is_refused_naming_the_version() -> None:
    assert llama_runtime.check_runtime(_stand_in()) is None
    four = SimpleNamespace(argtypes=[ctypes.c_int] * 4)  # 0.3.x's penalties sampler once took 4, then 5
    problem = llama_runtime.check_runtime(_stand_in(llama_sampler_init_penalties=four))
    assert problem is not None
    assert problem.startswith("llama-cpp-python 0.3.99 does not match moa's llama.cpp driver")
    assert "llama_sampler_init_penalties takes 4 arguments, where moa passes 5" in problem
    assert f"llama-cpp-python=={llama_runtime.PINNED_VERSION}" in problem


def test_a_missing_struct_field_or_function_is_refused() -> None:
    params = SimpleNamespace(_fields_=[("devices", ctypes.c_void_p)])
    assert "llama_model_params has no field use_extra_bufts" in str(
        llama_runtime.check_runtime(_stand_in(llama_model_params=params))
    )
    module = _stand_in()
    del module.llama_memory_seq_cp
    assert "it has no llama_memory_seq_cp" in str(llama_runtime.check_runtime(module))


def test_a_batch_smaller_than_a_step_is_refused_before_loading(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="needs the [local] extra")
    from moa_cli.providers.local import PromptThreads

    with pytest.raises(ValueError, match="cannot hold a step of 16 sequences"):
        llama_runtime.Runtime(
            tmp_path / "never-read.gguf",
            max_context=512,
            batch=llama_runtime.MAX_SEQUENCES - 1,
            generation_threads=1,
            prompt_threads=PromptThreads(),
            step_threads=PromptThreads(),
        )
