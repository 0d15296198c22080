"""One way to read and write the files of every artefact, so that a damaged one is one line.

Every loader of talk/artifacts, the latent cache and the training checkpoints reads through these
helpers. A missing, truncated, zeroed or garbled file, or one that does not fit the model it is
loaded into, becomes a ``TalkError`` naming the file and the `talk` command that rebuilds it
(e.g. ``artifacts/diffusion/model.safetensors: truncated or not a safetensors file; rebuild it
with `talk train-diffusion```) instead of a traceback from safetensors, json or torch.

Weights are written with the process's umask (0644 here): safetensors itself creates its files
0600.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talk.core.errors import TalkError

if TYPE_CHECKING:
    import torch
    from torch import nn


def rebuild(stage: str) -> str:
    """The hint that ends every message: which command writes the file again."""
    return f"rebuild it with `talk {stage}`"


def _missing(path: Path, stage: str) -> TalkError:
    return TalkError(f"{path} not found: run `talk {stage}` first (or point to a folder it wrote)")


def read_json(path: Path | str, stage: str) -> dict:
    """A JSON object from ``path``; missing, not JSON (truncated, zeroed, garbled) or not an object:
    one TalkError naming the file and ``stage``."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, stage)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TalkError(f"{path}: not valid JSON (truncated or damaged?); {rebuild(stage)}") from None
    if not isinstance(data, dict):
        raise TalkError(f"{path}: expected a JSON object, got {type(data).__name__}; {rebuild(stage)}")
    return data


def read_config(folder: Path | str, fmt: str, version: int, stage: str) -> dict:
    """``<folder>/config.json`` of a talk artefact, checked for its format name and version."""
    path = Path(folder) / "config.json"
    config = read_json(path, stage)
    if config.get("format") != fmt:
        raise TalkError(f"{path}: not a {fmt} config (format {config.get('format')!r}); {rebuild(stage)}")
    got = config.get("version")
    if not isinstance(got, int):
        raise TalkError(f"{path}: no format version; {rebuild(stage)}")
    if got > version:
        raise TalkError(f"{path}: format version {got} is newer than this code ({version})")
    return config


def parse_saved(cls: type, data: Any, path: Path | str, key: str, stage: str) -> Any:
    """A frozen config dataclass from a saved mapping, strictly: every field present, none unknown.

    A checkpoint that needs the code's defaults to load would silently change meaning when a
    default changes, so a missing key is an error here (params.yaml may leave keys out; saved
    artefacts may not)."""
    from talk.core.params import parse

    where = f"{path} {key}"
    if not isinstance(data, dict):
        raise TalkError(f"{where}: expected a mapping, got {type(data).__name__}; {rebuild(stage)}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown, missing = sorted(set(data) - fields), sorted(fields - set(data))
    if unknown or missing:
        what = "; ".join(p for p in (f"unknown keys {unknown}" if unknown else "",
                                     f"missing keys {missing}" if missing else "") if p)
        raise TalkError(f"{where}: {what} (written by another version of talk?); {rebuild(stage)}")
    return parse(cls, data, where)


def load_safetensors(path: Path | str, stage: str, device: Any = "cpu", metadata: bool = False):
    """Every tensor of a safetensors file (and its metadata when ``metadata``), checked finite.

    Truncated, zeroed or garbled files fail safetensors' header checks; garbled tensor bytes
    almost surely hold a NaN / inf bit pattern, which the finiteness check reports."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise _missing(path, stage)
    dev = torch.device(device)
    try:
        with safe_open(str(path), framework="pt", device="cpu" if dev.type == "cpu" else str(dev)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - safetensors raises its own (Rust) error type, OSError or ValueError
        raise TalkError(f"{path}: truncated or not a safetensors file; {rebuild(stage)}") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TalkError(f"{path}: tensor '{bad[0]}' holds NaN or infinite values (damaged?); {rebuild(stage)}")
    return (tensors, meta) if metadata else tensors


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path | str, stage: str,
               config: Path | str | None = None) -> nn.Module:
    """``module.load_state_dict(state, strict=True)``; missing / unexpected keys or other shapes
    mean the weights file does not fit the saved config: one TalkError."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        against = f" {config}" if config is not None else " the model"
        first = str(e).strip().splitlines()
        detail = " ".join(s.strip() for s in first[:2])[:300]
        raise TalkError(f"{path} does not match{against} ({detail}); {rebuild(stage)}") from None
    return module


def load_npz(path: Path | str, stage: str, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of an .npz (never unpickled), with ``keys`` required."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, stage)
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception:  # noqa: BLE001 - zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error
        raise TalkError(f"{path}: truncated or not an .npz archive; {rebuild(stage)}") from None
    for key in keys:
        if key not in data:
            raise TalkError(f"{path} has no '{key}' array; {rebuild(stage)}")
    return data


def public_mode(path: Path | str) -> None:
    """Give a file the mode the umask allows (0644 here) instead of a temp file's 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def save_safetensors(path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors (detached, on the CPU, contiguous) to ``path`` with the umask's mode."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    public_mode(path)
    return path


def public_modes(folder: Path | str) -> None:
    """``public_mode`` on every file under ``folder`` (after a library such as diffusers wrote it)."""
    for p in Path(folder).rglob("*"):
        if p.is_file():
            public_mode(p)
