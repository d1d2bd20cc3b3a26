"""The one way moa reads a file a user named, the one check before it writes one, and the one
atomic writer.

    data = read_file(path, "config file")          # bytes; ConfigError (exit 2) if unusable
    check_output(path, "--output")                 # ConfigError if PATH is there and not a regular file
    write_atomic(path, data)                       # whole or not at all (the one atomic writer)

Reading: regular files only (a FIFO, a device such as /dev/zero, a directory or a socket is
refused), opened with O_NONBLOCK so a FIFO cannot hang the open, checked with fstat after
opening (what was opened is what is read), and at most `limit` bytes (a file that grows
past it while read is refused too). Stdin is not read here.

Stdlib only (and moa's error tree).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from moa_cli.errors import ConfigError

#: The most bytes moa reads from one file: far above any config, prompt or benchmark file.
MAX_BYTES = 256 * 1024 * 1024
#: Config and prompt files: text a person wrote.
MAX_TEXT_BYTES = 16 * 1024 * 1024

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def read_file(path: Path, what: str, *, limit: int = MAX_BYTES, missing_ok: bool = False) -> bytes | None:
    """The bytes of `path`, a regular file of at most `limit` bytes; ConfigError (one line) if not.

    `what` names the file in the message ("config file", "aggregator prompt"). With
    `missing_ok`, a file that does not exist is None.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ConfigError(f"cannot read {what} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"cannot read {what} {path}: it is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise ConfigError(f"cannot read {what} {path}: it is larger than {_size(limit)}")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise ConfigError(f"cannot read {what} {path}: it is larger than {_size(limit)}")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_text(path: Path, what: str, *, limit: int = MAX_TEXT_BYTES) -> str:
    """`read_file` as UTF-8 text; ConfigError if it is not UTF-8."""
    data = read_file(path, what, limit=limit)
    assert data is not None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {what} {path}: not UTF-8 text (byte {exc.start})") from None


def check_output(path: Path, what: str) -> None:
    """ConfigError unless `path` is absent or a regular file: a FIFO, a symbolic link or a
    device (/dev/full) is never replaced by the file moa writes."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"cannot write {what} {path}: it is {_kind(info.st_mode)}, not a regular file")


def write_atomic(path: Path, data: bytes, *, what: str | None = "output file", overwrite: bool = True) -> None:
    """Write `data` to `path` all at once: a temporary file beside it, fsync, then its name.

    `what` names the file for `check_output` (ConfigError if `path` is there and is not a
    regular file), and its directory is made; None: neither (the caller has checked).
    Without `overwrite` an existing `path` is never replaced (FileExistsError): the
    temporary file is hard-linked to its name, which fails if the name is taken, even by a
    file that appeared a moment ago (where hard links are not supported: check, then rename).
    """
    if what is not None:
        check_output(path, what)
        path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
                os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
