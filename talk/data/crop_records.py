"""The crops folder's bookkeeping (``paths.crops``, written by crop_align): resume records,
shards, the merged manifest and the removal of stale clips.

Resumable: each finished input clip leaves a record (``<crops>/.done/<clip_id>.json``: its output
rows, rejects and a ``fingerprint`` of the config and input files); a re-run reuses records whose
fingerprint matches (``resume``). ``shard "i/n"`` takes the clips with ``crc32(clip_id) % n == i``
and writes ``manifest.shard-i-of-n.csv``; when every shard's manifest is there they are merged
into ``manifest.csv`` (``merge_shards``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zlib
from pathlib import Path

import pandas as pd
from rich.table import Table

from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_path, atomic_write_text
from talk.media.cropping import ClipResult, CropConfig

EXTRA_COLUMNS = ("n_frames", "crop_dir", "source_clip_id", "frame_offset")  # added to the manifest's columns
REJECT_COLUMNS = ("clip_id", "video_path", "reason")
RECORDS = ".done"  # per-input-clip records (resume)
FORMAT_VERSION = 1  # bump when the files written change meaning: old records are redone


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None -> (0, 1)."""
    if shard is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not m:
        raise TalkError(f"--shard expects i/n (e.g. 0/4), got '{shard}'")
    i, n = int(m[1]), int(m[2])
    if n < 1 or not 0 <= i < n:
        raise TalkError(f"--shard {shard}: need 0 <= i < n")
    return i, n


def shard_of(clip_id: str, n: int) -> int:
    """Deterministic shard of a clip: stable across machines and manifest orderings."""
    return zlib.crc32(clip_id.encode()) % n


def shard_name(kind: str, i: int, n: int) -> str:
    return f"{kind}.csv" if n == 1 else f"{kind}.shard-{i}-of-{n}.csv"


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    frame = pd.DataFrame(rows, columns=columns)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def merge_shards(out: Path) -> pd.DataFrame:
    """Merge ``manifest.shard-i-of-n.csv`` (and rejects) into ``manifest.csv`` once all n exist."""
    out = Path(out)
    found: dict[int, set[int]] = {}
    for p in out.glob("manifest.shard-*-of-*.csv"):
        m = re.fullmatch(r"manifest\.shard-(\d+)-of-(\d+)\.csv", p.name)
        if m:
            found.setdefault(int(m[2]), set()).add(int(m[1]))
    if not found:
        raise TalkError(f"no shard manifests (manifest.shard-i-of-n.csv) in {out}")
    if len(found) > 1:
        raise TalkError(f"{out}: shard manifests of different shard counts {sorted(found)}: remove the stale ones")
    (n, have), = found.items()
    missing = sorted(set(range(n)) - have)
    if missing:
        raise TalkError(f"{out}: shard(s) {', '.join(f'{i}/{n}' for i in missing)} not finished yet")
    frames = [pd.read_csv(out / shard_name("manifest", i, n), keep_default_na=False) for i in range(n)]
    manifest = pd.concat(frames, ignore_index=True).sort_values("clip_id", kind="stable")
    rejects = [out / shard_name("rejects", i, n) for i in range(n)]
    rej = pd.concat(
        [pd.read_csv(p, keep_default_na=False) for p in rejects if p.is_file()] or [pd.DataFrame(columns=REJECT_COLUMNS)],
        ignore_index=True,
    )
    with atomic_path(out / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    with atomic_path(out / "rejects.csv") as tmp:
        rej.sort_values("clip_id", kind="stable").to_csv(tmp, index=False)
    runtime.log.info("merged %d shard manifests: %d clips -> %s", n, len(manifest), out / "manifest.csv")
    return manifest


def fingerprint(row: dict, cfg: CropConfig, size: int) -> str:
    """Config + input row + input files' size and mtime: a record with another fingerprint is redone."""
    from talk.core.params import to_plain

    stats = []
    for key in ("video_path", "audio_path"):
        p = Path(str(row.get(key) or ""))
        stats.append([p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None)
    face = to_plain(cfg.face)
    keep = {k: v for k, v in to_plain(cfg).items() if k in ("max_gap", "min_frames", "crf")}
    blob = json.dumps([FORMAT_VERSION, size, face, keep, row, stats], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _record_path(out: Path, clip_id: str) -> Path:
    return out / RECORDS / f"{clip_id}.json"


def load_record(out: Path, clip_id: str, fp: str) -> ClipResult | None:
    path = _record_path(out, clip_id)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if rec.get("fingerprint") != fp:
        return None
    if not all((out / r["clip_id"] / "frames.mp4").is_file() for r in rec["rows"]):
        return None
    return ClipResult(rec["rows"], rec["rejects"], reused=True)


def save_record(out: Path, clip_id: str, fp: str, result: ClipResult) -> None:
    """The record of a finished input clip (its output rows and rejects), atomically."""
    atomic_write_text(
        _record_path(out, clip_id),
        json.dumps({"fingerprint": fp, "rows": result.rows, "rejects": result.rejects}, default=str),
    )


def resume(rows: list[dict], cfg: CropConfig, size: int, out: Path) -> tuple[dict[str, ClipResult], list[tuple[dict, str]]]:
    """Split input rows into those a matching record already covers (clip_id -> reused result)
    and those to crop, each with its fingerprint."""
    done: dict[str, ClipResult] = {}
    todo = []
    for row in rows:
        fp = fingerprint(row, cfg, size)
        result = load_record(out, row["clip_id"], fp)
        if result is not None:
            done[row["clip_id"]] = result
        else:
            todo.append((row, fp))
    return done, todo


def prune(out: Path, clips: set[str], inputs: set[str]) -> None:
    """After an unsharded run: remove clip folders and records of clips no longer in the manifest,
    and temporary folders of killed runs (the output folder is a DVC output kept between runs)."""
    removed = 0
    for p in out.iterdir():
        stale_clip = p.is_dir() and (p / "frames.mp4").is_file() and p.name not in clips
        if stale_clip or (p.name.startswith(".") and p.name.endswith(".tmp")):
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    for rec in (out / RECORDS).glob("*.json"):
        if rec.stem not in inputs:
            rec.unlink()
            removed += 1
    if removed:
        runtime.log.info("removed %d stale clip folders / records / temporary folders from %s", removed, out)


def summary(results: list[ClipResult], wall: float, shard) -> Table:
    """The run's table: clips in / reused / out, frames, rejects, decoding speed."""
    frames = sum(r.frames_in for r in results if not r.reused)
    table = Table(title="crop_align" + (f" shard {shard[0]}/{shard[1]}" if shard else ""))
    for col in ("input clips", "reused", "output clips", "frames out", "rejected", "frames decoded", "frames/s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(len(results)),
        str(sum(r.reused for r in results)),
        str(sum(len(r.rows) for r in results)),
        str(sum(int(row["n_frames"]) for r in results for row in r.rows)),
        str(sum(len(r.rejects) for r in results)),
        str(frames),
        f"{frames / wall:.0f}" if frames and wall > 0 else "-",
    )
    return table
