"""The lip-sync expert artefact (train_sync's output): config.json (format, the expert's
``SyncExpertConfig``, how it was trained) + model.safetensors, with its loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from talk.artifacts.files import load_safetensors, load_state, parse_saved, read_config, save_safetensors
from talk.core.params import to_plain

if TYPE_CHECKING:
    import torch

    from talk.models.syncnet import SyncExpert

FORMAT = "talk-sync-expert"
VERSION = 1
STAGE = "train-sync"  # the command that writes this artefact


def save_expert(expert: SyncExpert, folder: Path, info: dict) -> None:
    """config.json + model.safetensors of an expert into ``folder`` (a stage's temporary folder)."""
    config = {"format": FORMAT, "version": VERSION, "model": to_plain(expert.cfg), **info}
    (Path(folder) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_safetensors(Path(folder) / "model.safetensors", expert.state_dict(), {"format": FORMAT, "version": str(VERSION)})


def load_expert(path: Path | str, device: str | torch.device = "cpu") -> SyncExpert:
    """The expert written by `talk train-sync` in ``path``, in eval mode, its weights frozen;
    a missing or damaged file: one line naming it and the stage."""
    from talk.models.syncnet import SyncExpert, SyncExpertConfig

    path = Path(path)
    config = read_config(path, FORMAT, VERSION, STAGE)
    cfg = parse_saved(SyncExpertConfig, config.get("model"), path / "config.json", "model", STAGE)
    expert = SyncExpert(cfg)
    weights = path / "model.safetensors"
    load_state(expert, load_safetensors(weights, STAGE), weights, STAGE, path / "config.json")
    return expert.to(device).eval().requires_grad_(False)


def exists(path: Path | str) -> bool:
    """Whether ``path`` holds an expert (its config.json); its contents are checked on loading."""
    return (Path(path) / "config.json").is_file()
