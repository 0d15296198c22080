"""Stage `sample_data`: the embedded sample dataset, MEAD-like clips with ground truth.

Real portraits and real speech carried in the repo (``paths.sources``, attribution in its
MANIFEST.tsv) become emotional talking clips whose emotion, intensity and lip motion are known
exactly, so that emotion control and lip sync can be *measured* (docs/method.md §1 "Data"; how a
clip is made: talk/synthesis/clips.py):

- ``<paths.raw>/mead/<speaker>/video/front/<emotion>/level_<k>/<nnn>.mp4`` with ``<nnn>.gt.csv``
  beside it (per frame ``frame, mouth_open, emotion, level, speaker, x0..x67, y0..y67``), plus
  ``index.csv`` (one row per clip), ``SOURCES.tsv`` (attribution) and ``params.yaml``.
- ``<paths.raw>/wild/`` when ``sample_data.wild``: the real talking videos of the sources, flat, a
  same-stem .wav beside a video without audio (HDTF-like, unlabelled), ``labels.csv`` naming the
  speaker of the videos of people who are also portraits.
- ``<paths.raw>/mead/dropped.tsv``: the portraits the face check dropped before warping (no face,
  several faces, too small, mouth open), with the reason; each one is also logged.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

from rich.table import Table

from talk.core import runtime
from talk.core.fs import atomic_dir
from talk.synthesis.clips import SampleConfig as Config
from talk.synthesis.clips import make_clips, plan, screen_portraits, write_dropped, write_index
from talk.synthesis.sources import PORTRAIT_KINDS, WILD_KINDS, copy_wild, read_sources, write_attribution


def run(params) -> dict:
    cfg: Config = params.sample_data
    mead, wild = Path(params.paths.raw) / "mead", Path(params.paths.raw) / "wild"
    sources = read_sources(params.paths.sources)
    t0 = time.perf_counter()
    dropped = screen_portraits(cfg, sources)
    for d in dropped:
        runtime.log.warning("sample_data: portrait %s (%s) dropped: %s", d["file"], d["speaker"], d["reason"])
    jobs = plan(cfg, sources, params.base.seed, {d["speaker"] for d in dropped})
    with atomic_dir(mead) as tmp, (atomic_dir(wild) if cfg.wild else nullcontext(None)) as tmp_wild:
        with runtime.progress() as bar:
            task = bar.add_task("sample clips", total=len(jobs))
            rows = make_clips(jobs, cfg, params.base.seed, tmp, lambda: bar.advance(task))
        write_index(rows, tmp / "index.csv")
        write_dropped(dropped, tmp / "dropped.tsv")
        write_attribution(params.paths.sources, PORTRAIT_KINDS, tmp / "SOURCES.tsv")
        params.write_resolved(tmp / "params.yaml", ["base", "paths", "sample_data"])
        n_wild = 0
        if tmp_wild is not None:
            n_wild = copy_wild(sources, tmp_wild)
            write_attribution(params.paths.sources, WILD_KINDS, tmp_wild / "SOURCES.tsv")
    elapsed = time.perf_counter() - t0

    frames = sum(r["frames"] for r in rows)
    table = Table(title=f"sample_data -> {mead}" + (f", {wild}" if n_wild else ""))
    for col in ("speakers", "dropped", "emotions", "levels", "clips", "frames", "wild videos", "seconds", "frames/s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(len({r["speaker"] for r in rows})), str(len(dropped)), str(len(cfg.emotions)), str(len(cfg.levels)), str(len(rows)),
        str(frames), str(n_wild), f"{elapsed:.1f}", f"{frames / max(elapsed, 1e-9):.0f}",
    )
    runtime.console.print(table)
    return {"clips": len(rows), "frames": frames, "wild": n_wild, "speakers": len({r["speaker"] for r in rows}),
            "dropped": len(dropped), "seconds": elapsed}
