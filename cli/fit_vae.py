"""`talk fit-vae`: train (or load) the image VAE, measure its scaling factor and val PSNR / SSIM."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage


def fit_vae(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Train the own VAE on the training crops (or load model.vae.source); write artifacts/vae."""
    run_stage("fit_vae", params_file, sets, dry_run, sections=("base", "paths", "model", "fit_vae"))
