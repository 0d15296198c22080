"""`talk sample-data`: the embedded sample dataset (MEAD-like emotional clips with ground truth)."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage


def sample_data(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Animate the carried portraits with the carried speech: MEAD-layout clips (8 emotions x 3 levels) with per-frame ground truth, plus the in-the-wild videos."""
    run_stage("sample_data", params_file, sets, dry_run)
