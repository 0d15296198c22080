"""`talk serve`: the local web page (Gradio) for rendering, on the trained artefacts of the params.

    talk serve                                   # http://127.0.0.1:7860/ on params.yaml's artefacts
    talk serve --port 8000 --set render.sampling.steps=8
    talk serve --host 0.0.0.0                    # every interface: only on a trusted network
"""

from __future__ import annotations

import importlib.util
from typing import Annotated

import typer

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, load, print_config, user_errors
from talk.core import runtime
from talk.core.errors import TalkError

SECTIONS = ("base", "paths", "render", "serve")


def serve(
    host: Annotated[str | None, typer.Option("--host", help="address to bind (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default: serve.port; 0 = a free one).")] = None,
    params_file: ParamsOpt = DEFAULT_PARAMS,
    sets: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """A local web page for rendering: portrait, speech, emotion, guidance; the video in the page."""
    assignments = [f"serve.{k}={v}" for k, v in (("host", host), ("port", port)) if v is not None]
    params = load(params_file, [*(sets or ()), *assignments])
    if dry_run:
        print_config(params, SECTIONS)
        return
    with user_errors():
        if importlib.util.find_spec("gradio") is None:  # not imported here: its upload folder is set first
            raise TalkError("the web page needs Gradio: pip install -e '.[web]' (or make install)")
        runtime.setup(params.base)
        from talk.web.page import serve as run

        run(params)
