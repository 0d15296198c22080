"""Atomic file and folder writes: outputs appear complete or not at all.

Temporaries are ``.<name>.<pid>-<host>.<random>.tmp`` beside the output. The writing process
removes its own when the block fails or is interrupted (SIGINT, and SIGTERM once
``on_sigterm_exit`` is installed, as the `talk` command does); after a SIGKILL, the next process
that writes into the same folder removes those whose process is gone (on this machine: a pid
says nothing about another host's writes to shared storage).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _host() -> str:
    """A short tag of this machine: a pid means nothing on another one (shards on shared storage)."""
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


HOST = _host()
_scanned: set[Path] = set()  # folders this process has cleaned (once each: a folder may hold many outputs)


def remove_stale(folder: Path | str) -> list[Path]:
    """Remove the temporaries in ``folder`` of writes whose process, on this machine, is dead (a
    SIGKILLed run's); those of live processes and of other machines are kept."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        name = p.name
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        parts = name[1:-4].rsplit(".", 2)  # <output name>.<pid>-<host>.<random>
        if len(parts) != 3:
            continue
        pid, _, host = parts[1].partition("-")
        if host == HOST and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    parent = path.parent.resolve()
    if parent not in _scanned:
        remove_stale(parent)
        _scanned.add(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-{HOST}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the folder may become the output itself
    return tmp


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename onto ``path`` when the block succeeds.

    The temporary name keeps the suffix so that writers choosing a format by extension work.
    """
    path = Path(path)
    tmp_dir = _tmp_sibling(path)
    tmp = tmp_dir / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to {tmp}")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` when the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def on_sigterm_exit() -> None:
    """Make SIGTERM unwind like SIGINT (SystemExit 143 through every ``finally``), so that the
    temporaries of atomic writes are removed; main thread only (a no-op elsewhere)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _exit(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def check_output(path: Path | str, suffixes: tuple[str, ...] = (), what: str = "--out") -> Path:
    """``path`` when an output can be written there, else a TalkError; called before any work.

    Checks: not an existing folder; the suffix is one of ``suffixes`` (when given); the parent is
    (or can be made) a folder in which a file can be created (a probe file, removed at once:
    permission bits alone say nothing to root or to a read-only mount such as /proc).
    """
    import errno

    from talk.core.errors import TalkError

    path = Path(path)
    if path.is_dir():
        raise TalkError(f"{what} {path} is an existing folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise TalkError(f"{what} must end in {' or '.join(suffixes)}, got {path}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)
        raise TalkError(f"{what} {path}: cannot write in {parent} ({reason})") from None
    return path


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_artifact_config(folder: Path | str, fmt: str, version: int, what: str, stage: str) -> dict:
    """``<folder>/config.json`` of a talk artefact, checked for its format name and version.

    ``what`` names the artefact ("prior", "denoiser") and ``stage`` the command that makes it.
    """
    import json

    from talk.core.errors import TalkError

    cfg_file = Path(folder) / "config.json"
    if not cfg_file.is_file():
        raise TalkError(f"{cfg_file} not found: run talk {stage} first (or point to a {what} folder)")
    config = json.loads(cfg_file.read_text())
    if config.get("format") != fmt:
        raise TalkError(f"{cfg_file}: not a talk {what} (format {config.get('format')!r})")
    if config.get("version", 0) > version:
        raise TalkError(f"{cfg_file}: format version {config['version']} is newer than this code ({version})")
    return config
