"""`talk embed`: an emotion (and style) Gaussian from a reference video or audio file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage, user_errors
from talk.core.errors import TalkError


def embed(
    clip: Annotated[Path, typer.Argument(help="reference video (face + speech) or audio file.")],
    out: Annotated[Path, typer.Option("--out", help="output .npz (mu, logvar, style_mu, style_logvar, source, mode).")] = Path("emo.npz"),
    audio_only: Annotated[bool, typer.Option("--audio-only", help="embed from the audio alone.")] = False,
    video_only: Annotated[bool, typer.Option("--video-only", help="embed from the face alone.")] = False,
    neutral: Annotated[
        Path | None,
        typer.Option("--neutral", help="a neutral video of the same person: their own landmark template (default: the prior's population template)."),
    ] = None,
    prior: Annotated[Path | None, typer.Option("--prior", help="trained prior folder (default: paths.prior).")] = None,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="use at most this many seconds of the clip.", min=0.04)] = 20.0,
    params_file: ParamsOpt = DEFAULT_PARAMS,
    sets: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Embed a reference clip's emotion (and style) with the trained prior (DICE-Talk §3.1)."""
    if audio_only and video_only:
        with user_errors():
            raise TalkError("--audio-only and --video-only exclude each other")
    mode = "audio" if audio_only else "video" if video_only else "auto"
    run_stage(
        "embed", params_file, sets, dry_run,
        sections=("base", "model", "crop_align", "audio_features", "pretrain_prior"), module="talk.inference.embed",
        clip=clip, out=out, mode=mode, neutral=neutral, prior_dir=prior, max_seconds=max_seconds,
    )
