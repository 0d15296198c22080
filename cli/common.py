"""Options and plumbing shared by every `talk` command."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from talk.core import params as P
from talk.core import runtime
from talk.core.errors import TalkError
from talk.models.errors import ConfigError

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (YAML).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override: section.key=value (repeatable).")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the resolved config and exit.")]
DEFAULT_PARAMS = Path("params.yaml")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A TalkError becomes one red line and exit code 2; anything else keeps its traceback."""
    try:
        yield
    except (TalkError, ConfigError) as e:
        runtime.console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def load(params_file: Path, sets: Sequence[str] | None) -> P.Params:
    with user_errors():
        return P.load(params_file, sets or ())


def print_config(params: P.Params, sections: Sequence[str]) -> None:
    text = yaml.safe_dump(params.to_dict(sections), sort_keys=False)
    typer.echo(f"# resolved from {params.source}\n{text}", nl=False)


def run_stage(
    name: str,
    params_file: Path,
    sets: Sequence[str] | None,
    dry_run: bool,
    sections: Sequence[str] | None = None,
    module: str | None = None,
    **kwargs: Any,
) -> Any:
    """Load params, then either print the resolved config or run ``<module>.run`` (default: the
    stage ``talk.stages.<name>``)."""
    params = load(params_file, sets)
    sections = list(sections or ("base", "paths", name))
    if dry_run:
        print_config(params, sections)
        return None
    with user_errors():
        runtime.setup(params.base)
        return importlib.import_module(module or f"talk.stages.{name}").run(params, **kwargs)


def run_sequence(label: str, names: Sequence[str], params_file: Path, sets: Sequence[str] | None, dry_run: bool) -> None:
    """Run several stages in order in one process (`talk preprocess`, `talk train`)."""
    params = load(params_file, sets)
    if dry_run:
        print_config(params, ["base", "paths", "model", *names])
        return
    with user_errors():
        runtime.setup(params.base)
        for i, name in enumerate(names, 1):
            runtime.console.rule(f"[bold]{label} {i}/{len(names)}: {name}")
            importlib.import_module(f"talk.stages.{name}").run(params)
    runtime.console.print(f"[green]{label}:[/] ran {', '.join(names)}", highlight=False)
