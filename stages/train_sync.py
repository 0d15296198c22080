"""Stage `train_sync`: the lip-sync expert (audio window <-> mouth window, contrastive; Wav2Lip's /
LatentSync's SyncNet idea, talk/training/sync.py).

Reads the train and val clips of ``paths.crops`` (frames.mp4: the mouth is the lower half of the
aligned crop) and their Whisper states in ``paths.audio_features``. Writes ``paths.sync``:
``config.json`` + ``model.safetensors`` (``talk.artifacts.sync.load_expert``), ``metrics.json``
(val pair accuracy, Sync-C / Sync-D analogues of val clips in sync and shifted), ``params.yaml``
and ``checkpoints/`` (kept between runs: re-running resumes). evaluate scores Sync-C / Sync-D
(talk expert) with it; train_diffusion can use it as a loss (``objective.sync_weight``).
"""

from __future__ import annotations

import time
from pathlib import Path

from talk.core import runtime
from talk.training.sync import TrainSyncConfig as Config
from talk.training.sync import run_stage, summary

SECTIONS = ("base", "paths", "train_sync")  # every section read

__all__ = ["Config", "run"]


def run(params) -> Path:
    """Train the expert; write ``paths.sync``."""
    cfg: Config = params.train_sync
    started = time.time()

    def on_export(tmp: Path) -> None:
        params.write_resolved(tmp / "params.yaml", SECTIONS)

    result = run_stage(params, cfg, on_export)
    runtime.console.print(summary(result["metrics"]))
    runtime.log.info("train_sync: %.0f s, wrote %s", time.time() - started, params.paths.sync)
    return Path(params.paths.sync)
