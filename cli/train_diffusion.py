"""`talk train-diffusion`: train the conditioned latent denoiser (re-running resumes from the last checkpoint)."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage


def train_diffusion(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Train the denoiser + Emotion Bank on the latent cache; write artifacts/diffusion.

    Multi-GPU / multi-node: `accelerate launch --multi_gpu --num_processes N -m talk.cli.main train-diffusion`.
    """
    run_stage("train_diffusion", params_file, sets, dry_run, sections=("base", "paths", "model", "crop_align", "audio_features", "train_diffusion"))
