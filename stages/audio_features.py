"""Stage ``audio_features``: Whisper encoder hidden states at 50 Hz for every cropped clip
(docs/method.md §2): ``<paths.audio_features>/<clip_id>.npy`` float16 (2·T, L, D) for each row of
the crop manifest (``paths.crops``), plus ``meta.json`` (what the features depend on; resume).

The encoder on windows of any length, the settings (``Config``, saved with a trained denoiser) and
the resumable folder: talk/audio/features.py, the same code rendering uses for new speech.
"""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table

from talk.audio.features import RATE_HZ, update_features
from talk.audio.features import AudioFeaturesConfig as Config
from talk.audio.whisper_ckpt import load_whisper
from talk.core.runtime import console, device, log, progress
from talk.data.crops import read_manifest


def run(params) -> dict[str, Any]:
    """Write ``<clip_id>.npy`` for every row of the crop manifest; resumable (done clips skipped)."""
    import torch

    cfg: Config = params.audio_features
    crops, out = params.paths.crops, params.paths.audio_features
    rows = read_manifest(crops)
    model = load_whisper(cfg.whisper, params.paths.cache, device=str(device(params.base.device)))
    t0 = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("audio features", total=len(rows))
        result = update_features(rows, crops, out, model, cfg, lambda: bar.advance(task))
    wall = time.perf_counter() - t0
    params.write_resolved(out / "params.yaml", ["base", "paths", "audio_features"])

    ident, computed, audio_s = result.pop("identity"), result["computed"], result["audio_s"]
    table = Table(title=f"audio features -> {out}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("clips (computed / skipped)", f"{computed} / {result['skipped']}")
    table.add_row("stale files removed", str(result["stale_removed"]))
    table.add_row("audio encoded", f"{audio_s:.1f} s")
    table.add_row("speed", f"{audio_s / wall:.0f}x real time" if computed and wall > 0 else "-")
    table.add_row("features per clip", f"fp16 (2T, {ident['L']}, {ident['D']}) at {RATE_HZ} Hz")
    table.add_row("model", f"{cfg.whisper} ({ident['model']['encoder_sha256'][:12]})")
    table.add_row("torch threads", str(torch.get_num_threads()))
    console.print(table)
    log.debug("audio_features: %d computed, %d skipped in %.1f s", computed, result["skipped"], wall)
    return {**result, "wall_s": wall}
