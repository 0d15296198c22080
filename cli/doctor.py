"""`talk doctor`: what is installed, which device, and where every pretrained component is."""

from __future__ import annotations

import importlib.metadata
import os

import typer
from rich.table import Table

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, load, print_config
from talk.core import runtime, weights

PACKAGES = ("torch", "diffusers", "dvc", "openai-whisper", "av", "lmdb", "dlib-bin", "insightface")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def doctor(params_file: ParamsOpt = DEFAULT_PARAMS, sets: SetOpt = None, dry_run: DryRunOpt = False) -> None:
    """Check versions, device and pretrained weights; exit 0 when the configured pipeline can run."""
    import torch

    params = load(params_file, sets)
    if dry_run:
        print_config(params, list(params.sections))
        return
    console = runtime.console

    env = Table(title="environment", show_header=False)
    for dist in PACKAGES:
        env.add_row(dist, _version(dist))
    env.add_row("device (base.device=%s)" % params.base.device, str(runtime.device(params.base.device)))
    env.add_row("cuda", torch.version.cuda or "no (CPU build)")
    env.add_row("threads", f"{torch.get_num_threads()} torch / {os.cpu_count()} cores")
    env.add_row("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "unset"))
    console.print(env)

    table = Table(title=f"pretrained components ({params.source})")
    for col in ("component", "configured as", "status", "where"):
        table.add_column(col, overflow="fold")
    missing_required = 0
    for c in weights.components(params):
        if c.path is not None:
            status, where = "[green]found[/]", str(c.path)
        elif c.required:
            status, where = "[red]missing[/]", c.problem or ""
            missing_required += 1
        else:
            status, where = "[yellow]optional, absent[/]", c.problem or ""
        table.add_row(c.name, c.spec, status, where)
    console.print(table)
    if missing_required:
        console.print(f"[bold red]error:[/] {missing_required} required component(s) missing")
        raise typer.Exit(2)
    console.print("[green]ready:[/] the configured pipeline can run")
