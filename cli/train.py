"""`talk train`: the training stages in pipeline order (docs/pipeline.md).

``PIPELINE`` = pretrain_prior -> train_diffusion -> finetune_disc; a stage joins when its module
``stages/<name>.py`` exists and its params section is registered. The command says which stages
are not available instead of pretending to run them.
"""

from __future__ import annotations

import importlib
import importlib.util

from cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, load, print_config, user_errors
from stages import params as P
from stages import runtime

PIPELINE: tuple[str, ...] = ("pretrain_prior", "train_diffusion", "finetune_disc")


def available() -> list[str]:
    """The stages of ``PIPELINE`` whose module exists and whose section is registered, in order."""
    return [n for n in PIPELINE if n in P.SECTIONS and importlib.util.find_spec(f"stages.{n}") is not None]


def train(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Run the training stages in order: pretrain_prior -> train_diffusion -> finetune_disc."""
    names = available()
    missing = [n for n in PIPELINE if n not in names]
    params = load(params_file, sets)
    if dry_run:
        print_config(params, ["base", "paths", "model", *names])
        return
    if missing:
        runtime.console.print(f"[yellow]train: not available yet, not run:[/] {', '.join(missing)}", highlight=False)
    with user_errors():
        runtime.setup(params.base)
        for i, name in enumerate(names, 1):
            runtime.console.rule(f"[bold]train {i}/{len(names)}: {name}")
            importlib.import_module(f"stages.{name}").run(params)
    runtime.console.print(f"[green]train:[/] ran {', '.join(names)}", highlight=False)
