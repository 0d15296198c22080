"""Stage `train_diffusion`: the audio/emotion/style-conditioned latent denoiser (DICE-Talk §3, SVP §3.3).

Trains ``models.denoiser.TalkDenoiser`` (and the Emotion Bank, jointly) on ``paths.latents``
(cache_latents), ``paths.audio_features`` and the prior's clip embeddings (``paths.prior``), with
the objective of ``train_diffusion.objective`` (talk/training/diffusion.py). Writes:

- ``paths.diffusion``: ``config.json`` (spec, bank, objective) + ``model.safetensors`` (EMA
  weights; ``load_denoiser``), ``scheduler_config.json``, ``inference.json`` (the render settings
  ``train_diffusion.sampling``, the audio features' and the face crop's settings), ``params.yaml``;
- ``paths.diffusion_train``: ``checkpoints/`` (kept between runs: re-running resumes), ``live/``
  (dvclive: loss curves, previews sampled with ``sampling``), ``metrics.json``.

Multi-GPU: ``accelerate launch --multi_gpu --num_processes N -m talk.cli.main train-diffusion`` (talk/training/trainer.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from talk.core import runtime
from talk.training.diffusion import TrainDiffusionConfig as Config
from talk.training.diffusion import run_stage, summary, write_settings

SECTIONS = ("base", "paths", "model", "crop_align", "audio_features", "train_diffusion")  # every section read


def run(params) -> Path:
    """Train the denoiser; write ``paths.diffusion`` and ``paths.diffusion_train``."""
    cfg: Config = params.train_diffusion
    started = time.time()

    def on_export(tmp: Path) -> None:
        params.write_resolved(tmp / "params.yaml", SECTIONS)
        write_settings(tmp, params, cfg.sampling)

    result = run_stage(params, cfg, on_export)
    if result["trainer"].is_main:
        runtime.console.print(summary(result["metrics"]))
        runtime.log.info("train_diffusion: %.0f s, wrote %s", time.time() - started, params.paths.diffusion)
    return Path(params.paths.diffusion)
