"""`talk pretrain-prior`: train the emotion / style prior and the Emotion Bank (or import presets)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage


def pretrain_prior(
    params_file: ParamsOpt = DEFAULT_PARAMS,
    sets: SetOpt = None,
    dry_run: DryRunOpt = False,
    import_presets: Annotated[
        Path | None,
        typer.Option("--import-presets", help="instead of training: convert DICE-Talk's released presets (.npy) into a presets.safetensors."),
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option("--trust-pickle", help="allow --import-presets to unpickle the file (runs code stored in it: only for files you trust)."),
    ] = False,
    presets_out: Annotated[
        Path | None,
        typer.Option("--presets-out", help="where --import-presets writes (default: <paths.prior>_imported/presets.safetensors)."),
    ] = None,
) -> None:
    """Train the probabilistic emotion / style embedders and the Emotion Bank (DICE-Talk §3.1-3.2, SVP)."""
    run_stage(
        "pretrain_prior", params_file, sets, dry_run, sections=("base", "paths", "model", "pretrain_prior"),
        import_presets=import_presets, trust_pickle=trust_pickle, presets_out=presets_out,
    )
