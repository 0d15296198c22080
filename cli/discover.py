"""`talk discover`: find the usable clips under the data roots -> manifest, rejects, split."""

from __future__ import annotations

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, run_stage


def discover(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Probe every video under discover.roots; write the manifest (speaker-disjoint split) and the rejects table."""
    run_stage("discover", params_file, sets, dry_run)
