"""`talk audio-features`: Whisper encoder states (50 Hz, fp16) for every cropped clip."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage


def audio_features(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Whisper encoder states (50 Hz, fp16) of every crop's audio.wav; resumable."""
    run_stage("audio_features", params_file, sets, dry_run)
