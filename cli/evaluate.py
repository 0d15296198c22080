"""`talk evaluate`: render every test clip and score it against the real clip, with ceiling and floor rows."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage


def evaluate(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Score the trained model, the real clips (ceiling) and a repeated reference frame (floor);
    write metrics.json, per-clip table, plots and report.html."""
    run_stage("evaluate", params_file, sets, dry_run, sections=("base", "paths", "model", "evaluate", "render"))
