"""`talk cache-latents`: VAE posteriors (mean, std) of every cropped frame into the LMDB cache."""

from __future__ import annotations

from typing import Annotated

import typer

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage

VerifyOpt = Annotated[
    bool, typer.Option("--verify", help="check every entry against the manifest and the VAE; exit 2 listing problems.")
]


def cache_latents(
    params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False, verify: VerifyOpt = False
) -> None:
    """Encode every crop's frames with the VAE into data/latents.lmdb; resumable (done clips skipped)."""
    run_stage("cache_latents", params_file, sets, dry_run, sections=("base", "paths", "model", "cache_latents"),
              verify_only=verify)
