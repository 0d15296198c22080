"""Pipeline stages: one module per stage (a typed Config + run(params)) and the data I/O they share."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything hub-aware is imported
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
