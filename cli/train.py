"""`talk train`: the training stages in pipeline order (docs/pipeline.md)."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_sequence

PIPELINE: tuple[str, ...] = ("pretrain_prior", "train_diffusion", "finetune_disc")


def train(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Run the training stages in order: pretrain_prior -> train_diffusion -> finetune_disc."""
    run_sequence("train", PIPELINE, params_file, sets, dry_run)
