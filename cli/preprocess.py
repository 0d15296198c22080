"""`talk preprocess`: the preprocessing stages in pipeline order (docs/pipeline.md).

``PIPELINE`` is the order of docs/pipeline.md; a stage joins ``talk preprocess`` when its module
``stages/<name>.py`` exists. The command says which stages are not available yet instead of
pretending to run them.
"""

from __future__ import annotations

import importlib
import importlib.util

from cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, load, print_config, user_errors
from stages import runtime

PIPELINE: tuple[str, ...] = ("discover", "crop_align", "audio_features", "fit_vae", "cache_latents")


def available() -> list[str]:
    """The stages of ``PIPELINE`` whose module exists, in order."""
    return [n for n in PIPELINE if importlib.util.find_spec(f"stages.{n}") is not None]


def preprocess(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Run the preprocessing stages in order: discover -> crop_align -> audio_features -> fit_vae -> cache_latents."""
    names = available()
    missing = [n for n in PIPELINE if n not in names]
    params = load(params_file, sets)
    if dry_run:
        print_config(params, ["base", "paths", "model", *names])
        return
    if missing:
        runtime.console.print(f"[yellow]preprocess: not available yet, not run:[/] {', '.join(missing)}", highlight=False)
    with user_errors():
        runtime.setup(params.base)
        for i, name in enumerate(names, 1):
            runtime.console.rule(f"[bold]preprocess {i}/{len(names)}: {name}")
            importlib.import_module(f"stages.{name}").run(params)
    runtime.console.print(f"[green]preprocess:[/] ran {', '.join(names)}", highlight=False)
