"""The `talk` command line: thin Typer sub-apps over `stages`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything hub-aware is imported
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
