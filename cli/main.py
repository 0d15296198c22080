"""`talk`: the command line, one sub-app (or command) per module of cli/."""

from __future__ import annotations

import cli  # noqa: F401  (sets HF_HUB_OFFLINE before anything hub-aware loads)
import typer

from cli.discover import discover
from cli.doctor import doctor
from cli.preprocess import preprocess

app = typer.Typer(
    name="talk",
    help="Audio-driven, emotion-controllable talking-portrait video (DICE-Talk / SVP), end to end.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Audio-driven, emotion-controllable talking-portrait video (DICE-Talk / SVP), end to end."""


app.command("doctor")(doctor)
app.command("discover")(discover)
app.command("preprocess")(preprocess)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
