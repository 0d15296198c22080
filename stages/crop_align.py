"""Stage `crop_align`: aligned square face crops, landmarks, transforms and 16 kHz audio for every
clip of the discover manifest (``paths.manifest``) into ``paths.crops`` (docs/method.md §1 "Face
crop", §4; formats in docs/pipeline.md "Crops").

One clip: talk/media/cropping.py (tracking talk/media/faces.py). Resumable and shardable
(talk/data/crop_records.py): finished clips leave records a re-run reuses; ``shard="i/n"`` crops a
deterministic share and writes ``manifest.shard-i-of-n.csv``, merged into ``manifest.csv`` when
every shard is there (``merge=True`` only merges).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from talk.core import runtime
from talk.core.errors import TalkError
from talk.data import crop_records as rec
from talk.data.manifest import read_manifest
from talk.media.cropping import CropConfig as Config
from talk.media.cropping import process_all


def run(params, shard: str | None = None, merge: bool = False) -> pd.DataFrame:
    """Crop and align every clip of the manifest (or of one shard); returns the output manifest."""
    cfg: Config = params.crop_align
    size = params.model.image_size
    out = Path(params.paths.crops)
    if merge:
        return rec.merge_shards(out)
    i, n = rec.parse_shard(shard)
    manifest = read_manifest(params.paths.manifest)
    rows = [r for r in manifest.to_dict("records") if rec.shard_of(r["clip_id"], n) == i]
    out.mkdir(parents=True, exist_ok=True)
    params.write_resolved(out / "params.yaml", ["base", "paths", "model", "crop_align"])
    columns = list(manifest.columns) + [c for c in rec.EXTRA_COLUMNS if c not in manifest.columns]
    results, todo = rec.resume(rows, cfg, size, out)
    runtime.log.info(
        "crop_align: %d clips%s (%d done before), %s crops of %d px, %s detector",
        len(rows), f" in shard {i}/{n} of {len(manifest)}" if n > 1 else "", len(results), cfg.face.crop, size,
        cfg.face.detector,
    )
    fingerprints = {row["clip_id"]: fp for row, fp in todo}
    t0 = time.perf_counter()
    with runtime.progress() as bar:
        task = bar.add_task("crop_align", total=len(todo))
        for row, result in process_all([r for r, _ in todo], cfg, size, out):
            for level, msg in result.notes:
                runtime.log.log(level, msg)
            rec.save_record(out, row["clip_id"], fingerprints[row["clip_id"]], result)
            results[row["clip_id"]] = result
            bar.advance(task)
    wall = time.perf_counter() - t0
    done = [results[r["clip_id"]] for r in rows]
    out_rows = [r for res in done for r in res.rows]
    rec.write_csv(out / rec.shard_name("rejects", i, n), [r for res in done for r in res.rejects], list(rec.REJECT_COLUMNS))
    runtime.console.print(rec.summary(done, wall, n > 1 and (i, n)))
    if not out_rows and n == 1:
        raise TalkError(f"no clip survived cropping: see {out / 'rejects.csv'}")
    rec.write_csv(out / rec.shard_name("manifest", i, n), sorted(out_rows, key=lambda r: r["clip_id"]), columns)
    if n == 1:
        rec.prune(out, {r["clip_id"] for r in out_rows}, {r["clip_id"] for r in rows})
        return pd.read_csv(out / "manifest.csv", keep_default_na=False)
    try:
        return rec.merge_shards(out)
    except TalkError as e:  # other shards still running: they merge when the last one ends
        runtime.log.info("not merged yet: %s", e)
        return pd.DataFrame(out_rows, columns=columns)
