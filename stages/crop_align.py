"""Stage `crop_align`: aligned square face crops, landmarks, transforms and 16 kHz audio per clip
(docs/method.md §1 "Face crop", §4; formats in docs/pipeline.md "Crops").

For each manifest row: decode the video at 25 fps (``stages.media``), read its audio (the video's
own track, or the separate ``audio_path``) as 16 kHz mono, trim both to the shorter, track the
largest face (``stages.faces``), bridge face gaps of at most ``max_gap`` frames by interpolation
and split the clip at longer ones (``<clip_id>_s<k>``), then write each piece to
``<out>/<clip_id>/`` atomically: ``frames.mp4``, ``landmarks.npy``, ``transforms.npy``,
``audio.wav``. Unusable clips and pieces shorter than ``min_frames`` go to ``rejects.csv`` with the
reason; the run continues.

Resumable: each finished input clip leaves a record (``<out>/.done/<clip_id>.json``: its output
rows, rejects and a fingerprint of the config and input files); a re-run reuses records whose
fingerprint matches. ``shard="i/n"`` processes the clips with ``crc32(clip_id) % n == i`` and
writes ``manifest.shard-i-of-n.csv``; when every shard's manifest is there they are merged into
``manifest.csv`` (``merge=True`` only merges, ``merge_shards``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import re
import shutil
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from rich.table import Table

from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_dir, atomic_path, atomic_write_text
from talk.core.params import rng
from talk.data.manifest import read_manifest
from talk.media import faces
from talk.media import io as media

T = TypeVar("T")

EXTRA_COLUMNS = ("n_frames", "crop_dir", "source_clip_id", "frame_offset")  # added to the manifest's columns
REJECT_COLUMNS = ("clip_id", "video_path", "reason")
SAMPLES_PER_FRAME = media.AUDIO_RATE // media.VIDEO_FPS  # 640 audio samples per video frame
RECORDS = ".done"  # per-input-clip records (resume)
POOL_MIN_SECONDS = 120.0  # s of video to crop before `workers: 0` starts worker processes (~1-2 s each to start)
FORMAT_VERSION = 1  # bump when the files written change meaning: old records are redone


@dataclasses.dataclass(frozen=True)
class Config:
    manifest: Path = Path("data/manifest.csv")  # input: discover's manifest
    out: Path = Path("data/crops")  # output folder: one sub-folder per clip, manifest.csv, rejects.csv
    max_gap: int = dataclasses.field(default=12, metadata=rng(0))  # frames: face gaps up to this long are interpolated, longer ones split the clip
    min_frames: int = dataclasses.field(default=25, metadata=rng(1))  # frames: shorter clips (or pieces of a split clip) are rejected
    crf: int = dataclasses.field(default=12, metadata=rng(0, 51))  # H.264 constant rate factor of frames.mp4 (0 = lossless, 12 = near-lossless)
    buffer_mb: int = dataclasses.field(default=1024, metadata=rng(0))  # MB of decoded frames kept per clip (per worker); longer clips are decoded twice
    workers: int = dataclasses.field(default=0, metadata=rng(0))  # clips processed in parallel (processes); 0 = one per CPU core when there are >= 2 min of video
    face: faces.FaceConfig = dataclasses.field(default_factory=faces.FaceConfig)  # detection, tracking, smoothing, crop geometry


@dataclasses.dataclass
class ClipResult:
    rows: list[dict]  # output manifest rows
    rejects: list[dict]  # rejected clips / pieces with the reason
    frames_in: int = 0  # frames decoded (25 fps)
    seconds: float = 0.0  # wall time
    reused: bool = False  # taken from a previous run's record
    notes: list = dataclasses.field(default_factory=list)  # (logging level, message) to log


# --------------------------------------------------------------------------------------------
# Manifest and shards


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


# --------------------------------------------------------------------------------------------
# One clip


def fingerprint(row: dict, cfg: Config, size: int) -> str:
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


def _audio(row: dict, video: Path, info: media.MediaInfo) -> np.ndarray:
    audio_path = Path(str(row.get("audio_path") or video))
    separate = audio_path.resolve() != video.resolve()
    if not separate and not info.has_audio:
        raise TalkError("video has no audio track and no separate audio file (audio_path = video_path)")
    return media.read_audio(audio_path, media.AUDIO_RATE)


_END = object()


def prefetch(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` ahead.

    PyAV decoding and OpenCV release the GIL, so decoding (or warping) overlaps with the dlib
    predictor (or the encoder) on another core. Exceptions re-raise here; closing the iterator
    early stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer
            put(e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator: release its file now, in its own thread
                close()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class _Frames:
    """Frames of one clip, decoded once and kept (within ``buffer_mb``) or decoded again."""

    def __init__(self, video: Path, limit: int, buffer_bytes: int):
        self.video, self.limit, self.budget = video, limit, buffer_bytes
        self.kept: list[np.ndarray] | None = []
        self.count = 0
        self.stopped = False  # decoding stopped at ``limit`` (the video is longer)

    def first_pass(self) -> Iterator[np.ndarray]:
        size = 0
        for frame in media.iter_video(self.video, media.VIDEO_FPS):
            if self.count >= self.limit:
                self.stopped = True
                break
            if self.kept is not None:
                size += frame.nbytes
                if size <= self.budget:
                    self.kept.append(frame)
                else:
                    self.kept = None  # over budget: decode again for writing
            self.count += 1
            yield frame

    def pieces(self, segments: list[tuple[int, int]]) -> Iterator[Iterator[np.ndarray]]:
        """One frame iterator per segment, in order (segments sorted and disjoint)."""
        if self.kept is not None:
            for a, b in segments:
                yield iter(self.kept[a:b])
            return
        source = enumerate(media.iter_video(self.video, media.VIDEO_FPS))

        def piece(a: int, b: int) -> Iterator[np.ndarray]:
            for t, frame in source:
                if t >= a:
                    yield frame
                if t + 1 >= b:
                    return

        for a, b in segments:
            yield piece(a, b)


def process_clip(row: dict, cfg: Config, size: int, tracker: faces.FaceTracker) -> ClipResult:
    """Crop one manifest row into ``cfg.out``; user-level problems become rejects.

    Log lines go to ``ClipResult.notes`` (the caller logs them: clips may run in worker processes).
    """
    start = time.perf_counter()
    clip_id = row["clip_id"]
    video = Path(row["video_path"])
    notes: list[tuple[int, str]] = []

    def note(level: int, msg: str) -> None:
        notes.append((level, msg))

    def reject(reason: str, name: str = clip_id) -> dict:
        note(logging.WARNING, f"{name}: rejected: {reason}")
        return {"clip_id": name, "video_path": str(video), "reason": reason}

    def done(rows, rejects, frames_in=0) -> ClipResult:
        return ClipResult(rows, rejects, frames_in, time.perf_counter() - start, notes=notes)

    try:
        info = media.probe(video)
        if not info.has_video:
            raise TalkError("no video stream")
        audio = _audio(row, video, info)
    except TalkError as e:
        return done([], [reject(str(e))])

    audio_frames = round(len(audio) / SAMPLES_PER_FRAME)  # within half a frame: padded with silence
    frames = _Frames(video, audio_frames, cfg.buffer_mb * 2**20)
    try:
        track = tracker.track(prefetch(frames.first_pass()))
    except TalkError as e:
        return done([], [reject(str(e))])
    n = frames.count  # <= audio_frames
    audio_s = len(audio) / media.AUDIO_RATE
    video_s = info.duration if frames.stopped else n / media.VIDEO_FPS
    if abs(audio_s - video_s) > 1 / media.VIDEO_FPS:
        note(logging.INFO, f"{clip_id}: audio {audio_s:.2f} s, video {video_s:.2f} s: trimmed to the shorter ({n / media.VIDEO_FPS:.2f} s)")
    if track.max_faces > 1:
        note(logging.INFO, f"{clip_id}: up to {track.max_faces} faces in view: tracking the largest")

    segments = faces.find_segments(track.found, cfg.max_gap)
    if not segments:
        return done([], [reject("no face found")], n)
    named = [(clip_id if len(segments) == 1 else f"{clip_id}_s{k}", a, b) for k, (a, b) in enumerate(segments)]
    if len(segments) > 1:
        note(logging.INFO, f"{clip_id}: face gaps longer than {cfg.max_gap} frames: split into {len(segments)} pieces")
    elif segments[0] != (0, n):
        note(logging.INFO, f"{clip_id}: no face in the first {segments[0][0]} / last {n - segments[0][1]} frames: cut")
    keep = [(name, a, b) for name, a, b in named if b - a >= cfg.min_frames]
    rejects = [
        reject(f"only {b - a} frames with a face (min_frames {cfg.min_frames})", name)
        for name, a, b in named
        if b - a < cfg.min_frames
    ]
    rows = []
    for (name, a, b), piece in zip(keep, frames.pieces([(a, b) for _, a, b in keep])):
        lm = track.landmarks[a:b]
        gaps = int(np.isnan(lm[:, 0, 0]).sum())
        if gaps:
            note(logging.INFO, f"{name}: {gaps} frames without a face interpolated")
        M, crop_lm = faces.clip_transforms(faces.interpolate_gaps(lm), cfg.face, size)
        clip_audio = np.zeros((b - a) * SAMPLES_PER_FRAME, np.float32)
        chunk = audio[a * SAMPLES_PER_FRAME : b * SAMPLES_PER_FRAME]
        clip_audio[: len(chunk)] = chunk
        with atomic_dir(cfg.out / name) as tmp:
            tmp.chmod(0o755)  # mkdtemp makes it private
            written = media.write_video(
                tmp / "frames.mp4",
                prefetch(faces.warp(f, m, size, cfg.face.pad) for f, m in zip(piece, M)),
                fps=media.VIDEO_FPS, crf=cfg.crf, pix_fmt="yuv444p",
            )
            if written != b - a:
                raise RuntimeError(f"{name}: wrote {written} frames, expected {b - a}")
            np.save(tmp / "landmarks.npy", crop_lm)
            np.save(tmp / "transforms.npy", M)
            media.write_wav(tmp / "audio.wav", clip_audio, media.AUDIO_RATE)
        rows.append({
            **row,
            "clip_id": name,
            "duration": round((b - a) / media.VIDEO_FPS, 4),
            "n_frames": b - a,
            "crop_dir": str(cfg.out / name),
            "source_clip_id": clip_id,
            "frame_offset": a,
        })
    return done(rows, rejects, n)


@functools.cache
def _worker_tracker(face: faces.FaceConfig) -> faces.FaceTracker:
    return faces.FaceTracker(face)


def _process_in_worker(job: tuple[dict, Config, int]) -> ClipResult:
    row, cfg, size = job
    return process_clip(row, cfg, size, _worker_tracker(cfg.face))


def pool_size(jobs: list[dict], workers: int) -> int:
    """Worker processes for ``jobs``: ``workers``, or with 0 one per core when there is enough video
    (``POOL_MIN_SECONDS`` by the manifest's durations) to pay for starting them."""
    if workers == 0:
        seconds = sum(float(r.get("duration") or 0) if _is_number(r.get("duration")) else 0.0 for r in jobs)
        workers = (os.cpu_count() or 1) if seconds >= POOL_MIN_SECONDS else 1
    return max(1, min(workers, len(jobs)))


def _is_number(x) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


def process_all(jobs: list[dict], cfg: Config, size: int) -> Iterator[tuple[dict, ClipResult]]:
    """(row, result) for each row in order: in worker processes (``pool_size``), or inline."""
    workers = pool_size(jobs, cfg.workers)
    if workers <= 1:
        for row in jobs:
            yield row, process_clip(row, cfg, size, _worker_tracker(cfg.face))
        return
    # forkserver: workers fork from a clean server that imported this module once (not from a
    # parent that may hold threads); spawn where there is no fork
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([__name__])
    with ctx.Pool(workers) as pool:
        results = pool.imap(_process_in_worker, [(row, cfg, size) for row in jobs])
        yield from zip(jobs, results)


# --------------------------------------------------------------------------------------------
# The stage


def run(params, shard: str | None = None, merge: bool = False) -> pd.DataFrame:
    """Crop and align every clip of the manifest (or of one shard); returns the output manifest."""
    cfg: Config = params.crop_align
    size = params.model.image_size
    out = Path(cfg.out)
    if merge:
        return merge_shards(out)
    i, n = parse_shard(shard)
    manifest = read_manifest(cfg.manifest)
    rows = [r for r in manifest.to_dict("records") if shard_of(r["clip_id"], n) == i]
    out.mkdir(parents=True, exist_ok=True)
    params.write_resolved(out / "params.yaml", ["base", "model", "crop_align"])
    columns = list(manifest.columns) + [c for c in EXTRA_COLUMNS if c not in manifest.columns]
    results: dict[str, ClipResult] = {}
    todo = []
    for row in rows:
        fp = fingerprint(row, cfg, size)
        done = load_record(out, row["clip_id"], fp)
        if done is not None:
            results[row["clip_id"]] = done
        else:
            todo.append((row, fp))
    runtime.log.info(
        "crop_align: %d clips%s (%d done before), %s crops of %d px, %s detector",
        len(rows), f" in shard {i}/{n} of {len(manifest)}" if n > 1 else "", len(results), cfg.face.crop, size,
        cfg.face.detector,
    )
    fingerprints = {row["clip_id"]: fp for row, fp in todo}
    t0 = time.perf_counter()
    with runtime.progress() as bar:
        task = bar.add_task("crop_align", total=len(todo))
        for row, result in process_all([r for r, _ in todo], cfg, size):
            for level, msg in result.notes:
                runtime.log.log(level, msg)
            atomic_write_text(
                _record_path(out, row["clip_id"]),
                json.dumps({"fingerprint": fingerprints[row["clip_id"]], "rows": result.rows, "rejects": result.rejects}, default=str),
            )
            results[row["clip_id"]] = result
            bar.advance(task)
    wall = time.perf_counter() - t0
    results = [results[r["clip_id"]] for r in rows]
    out_rows = [r for res in results for r in res.rows]
    rejects = [r for res in results for r in res.rejects]
    write_csv(out / shard_name("rejects", i, n), rejects, list(REJECT_COLUMNS))
    _summary(results, wall, n > 1 and (i, n))
    if not out_rows and n == 1:
        raise TalkError(f"no clip survived cropping: see {out / 'rejects.csv'}")
    write_csv(out / shard_name("manifest", i, n), sorted(out_rows, key=lambda r: r["clip_id"]), columns)
    if n == 1:
        prune(out, {r["clip_id"] for r in out_rows}, {r["clip_id"] for r in rows})
        return pd.read_csv(out / "manifest.csv", keep_default_na=False)
    try:
        return merge_shards(out)
    except TalkError as e:  # other shards still running: they merge when the last one ends
        runtime.log.info("not merged yet: %s", e)
        return pd.DataFrame(out_rows, columns=columns)


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


def _summary(results: list[ClipResult], wall: float, shard) -> None:
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
    runtime.console.print(table)
