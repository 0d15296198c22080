"""`talk crop-align`: aligned face crops, landmarks, transforms and 16 kHz audio for every clip."""

from __future__ import annotations

from typing import Annotated

import typer

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage

ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="i/n (0 <= i < n): process this machine's deterministic share of the clips."),
]
MergeOpt = Annotated[bool, typer.Option("--merge", help="only merge the shard manifests into manifest.csv.")]


def crop_align(
    params_file: ParamsOpt = DEFAULT_PARAMS,
    sets: SetOpt = None,
    dry_run: DryRunOpt = False,
    shard: ShardOpt = None,
    merge: MergeOpt = False,
) -> None:
    """Track the largest face of every manifest clip; write crops, landmarks, transforms, audio (data/crops)."""
    run_stage("crop_align", params_file, sets, dry_run, sections=("base", "paths", "model", "crop_align"), shard=shard, merge=merge)
