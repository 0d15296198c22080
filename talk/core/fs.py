"""Atomic file and folder writes: outputs appear complete or not at all."""

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


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
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
