"""Every file moa reads is a bounded regular file, every file it writes replaces only a regular
file (moa_cli/files.py): a FIFO, a device or a symbolic link is exit 2 with one line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import Ran
from tests.fakes.llm_server import FakeLLMServer

LINEUP = ["-r", "alpha", "-a", "judge"]


def one_error_line(proc: Ran, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("moa: error:"), proc.stderr
    assert all(word in proc.stderr for word in words), proc.stderr


def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": 1, "prompt": "hi"}) + "\n")
    return path


def test_aggregator_prompt_from_dev_zero_is_refused(moa, llm_server: FakeLLMServer) -> None:
    proc = moa(["ask", "hi", *LINEUP, "--aggregator-prompt", "/dev/zero"])
    one_error_line(proc, "/dev/zero", "character device")
    assert llm_server.requests == []


def test_a_config_file_that_is_a_fifo_does_not_hang(cli, moa_home: Path, llm_server: FakeLLMServer) -> None:
    os.mkfifo(moa_home / "config.toml")
    proc = cli(["ask", "hi", *LINEUP], timeout=20)  # a hang is the subprocess timeout
    one_error_line(proc, "config file", "FIFO")


def test_a_too_large_prompt_file_is_refused(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with big.open("wb") as file:
        file.truncate(17 * 1024 * 1024)  # sparse: nothing is written
    proc = moa(["ask", "hi", *LINEUP, "--aggregator-prompt", str(big)])
    one_error_line(proc, "larger than 16 MiB")


def test_batch_input_that_is_a_fifo_is_refused(cli, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    proc = cli(["batch", str(fifo), "-o", str(tmp_path / "out.jsonl"), *LINEUP], timeout=20)
    one_error_line(proc, "input file", "FIFO")


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
def test_batch_output_that_is_not_a_regular_file_is_refused(
    moa, llm_server: FakeLLMServer, tmp_path: Path, kind: str
) -> None:
    source = prompts(tmp_path)
    out = tmp_path / "out.jsonl"
    if kind == "device":
        # A node of its own, like /dev/full: never a system device, which a moa without the
        # check would replace with a regular file (as root).
        try:
            os.mknod(out, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        except PermissionError:
            pytest.skip("making a device node needs root")
    elif kind == "fifo":
        os.mkfifo(out)
    else:
        (tmp_path / "elsewhere.jsonl").write_text("kept\n")
        out.symlink_to(tmp_path / "elsewhere.jsonl")
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP])
    one_error_line(proc, "--output", str(out), "not a regular file")
    assert llm_server.requests == []
    if kind == "symlink":
        assert out.is_symlink() and (tmp_path / "elsewhere.jsonl").read_text() == "kept\n"
    if kind == "fifo":
        assert stat.S_ISFIFO(out.lstat().st_mode)
    if kind == "device":
        assert stat.S_ISCHR(out.lstat().st_mode)


def test_deeply_nested_toml_is_exit_2(moa, moa_home: Path, llm_server: FakeLLMServer) -> None:
    (moa_home / "config.toml").write_text("x = " + "[" * 100000 + "]" * 100000 + "\n")
    proc = moa(["ask", "hi", *LINEUP])
    one_error_line(proc, "config.toml")
