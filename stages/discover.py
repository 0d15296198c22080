"""Stage `discover`: find every usable talking-face clip under the data roots (``discover.roots``
under ``paths.raw``), write the manifest (``paths.manifest``, with a speaker-disjoint
train/val/test split) and the rejects table (``paths.rejects``), docs/method.md §1 "Data", §3.

Layouts, labels, probing and the split: talk/data/discovery.py; the manifest's columns:
talk/data/manifest.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from talk.core import runtime
from talk.data.discovery import DiscoverConfig as Config
from talk.data.discovery import discover
from talk.data.manifest import summary, write_table


def run(params) -> pd.DataFrame:
    """Discover clips under ``discover.roots``; write manifest, rejects and the resolved config."""
    cfg: Config = params.discover
    paths = params.paths
    manifest, rejects, _ = discover(cfg, paths.raw)
    write_table(manifest, paths.manifest)
    write_table(rejects, paths.rejects)
    params.write_resolved(resolved_path(paths.manifest), ["base", "paths", "discover"])
    runtime.console.print(summary(manifest, rejects))
    runtime.console.print(
        f"discover: {len(manifest)} clips ({manifest['speaker'].nunique()} speakers) -> {paths.manifest}; "
        f"{len(rejects)} rejected -> {paths.rejects}",
        highlight=False,
        soft_wrap=True,
    )
    return manifest


def resolved_path(manifest: Path) -> Path:
    """The resolved config written beside the manifest: ``<manifest stem>.params.yaml``."""
    return Path(manifest).with_name(Path(manifest).stem + ".params.yaml")
