"""The `talk` command line: thin Typer sub-apps over talk.stages and the library."""
