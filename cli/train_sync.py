"""`talk train-sync`: the lip-sync expert (audio window <-> mouth window) for evaluate and train_diffusion."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage


def train_sync(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Train the lip-sync expert on the training clips' mouths and Whisper features; write artifacts/sync."""
    run_stage("train_sync", params_file, sets, dry_run, sections=("base", "paths", "train_sync"))
