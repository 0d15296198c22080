"""`talk finetune-disc`: emotion discriminator on the denoiser's features, then fine-tuning with it."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage


def finetune_disc(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Train the emotion judge on the frozen denoiser, fine-tune the denoiser with it; write artifacts/finetune_disc.

    Multi-GPU / multi-node: `accelerate launch --multi_gpu --num_processes N -m talk.cli.main finetune-disc`.
    """
    run_stage("finetune_disc", params_file, sets, dry_run, sections=("base", "paths", "model", "finetune_disc"))
