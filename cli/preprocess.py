"""`talk preprocess`: the preprocessing stages in pipeline order (docs/pipeline.md)."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_sequence

PIPELINE: tuple[str, ...] = ("discover", "crop_align", "audio_features", "fit_vae", "cache_latents")


def preprocess(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Run the preprocessing stages in order: discover -> crop_align -> audio_features -> fit_vae -> cache_latents."""
    run_sequence("preprocess", PIPELINE, params_file, sets, dry_run)
