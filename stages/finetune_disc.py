"""Stage `finetune_disc`: emotion discrimination, then fine-tuning the denoiser with it (DICE-Talk §3.3).

Trains an emotion judge on the frozen features of ``paths.diffusion``'s denoiser, then fine-tunes
that denoiser with the objective it was trained with (saved in its config.json) plus the judge's
loss on its own predictions (talk/training/discriminator.py). Previews use the render settings
saved with the input (its ``inference.json``, carried into the output).

Writes ``paths.finetune_disc`` in train_diffusion's loadable format (``load_denoiser``) plus
``discriminator.safetensors``, ``inference.json`` and ``params.yaml``; ``paths.finetune_disc_train``
holds checkpoints/, live/ and ``metrics.json`` (judge accuracy per noise level; judge accuracy on
the denoiser's predictions before / after; validation loss per noise level).
"""

from __future__ import annotations

import time
from pathlib import Path

from talk.core import runtime
from talk.training.discriminator import FinetuneDiscConfig as Config
from talk.training.discriminator import copy_settings, run_stage, summary

SECTIONS = ("base", "paths", "model", "finetune_disc")  # every section read


def run(params) -> Path:
    """Train the judge, fine-tune the denoiser with it; write ``paths.finetune_disc`` and its work folder."""
    cfg: Config = params.finetune_disc
    started = time.time()

    def on_export(tmp: Path) -> None:
        params.write_resolved(tmp / "params.yaml", SECTIONS)
        copy_settings(params.paths.diffusion, tmp)

    result = run_stage(params, cfg, on_export)
    if result["tuner"].is_main:
        runtime.console.print(summary(result["metrics"]))
        runtime.log.info("finetune_disc: %.0f s, wrote %s", time.time() - started, params.paths.finetune_disc)
    return Path(params.paths.finetune_disc)
