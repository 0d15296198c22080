"""Cropping one clip: aligned square face crops, landmarks, transforms and 16 kHz audio
(docs/method.md §1 "Face crop", §4; the files: docs/pipeline.md "Crops", talk/data/crops.py).

For a discover-manifest row (``process_clip``): decode the video at 25 fps (talk/media/io.py),
read its audio (the video's own track, or the separate ``audio_path``) as 16 kHz mono, trim both to
the shorter, track the largest face (talk/media/faces.py), bridge face gaps of at most ``max_gap``
frames by interpolation and split the clip at longer ones (``<clip_id>_s<k>``), then write each
piece to ``<crops>/<clip_id>/`` atomically: ``frames.mp4``, ``landmarks.npy``, ``transforms.npy``,
``audio.wav``. Unusable clips and pieces shorter than ``min_frames`` become rejects with the
reason. Decoding and encoding overlap with tracking in background threads (``prefetch``); many
clips run in worker processes (``process_all``). Resume records and shards:
talk/data/crop_records.py.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from talk.core.errors import TalkError
from talk.core.fs import atomic_dir
from talk.core.params import rng
from talk.media import faces
from talk.media import io as media

T = TypeVar("T")
SAMPLES_PER_FRAME = media.AUDIO_RATE // media.VIDEO_FPS  # 640 audio samples per video frame


POOL_MIN_SECONDS = 120.0  # s of video to crop before `workers: 0` starts worker processes (~1-2 s each to start)


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """params.yaml ``crop_align``: reads ``paths.manifest``, writes ``paths.crops``."""

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


def _audio(row: dict, video: Path, info: media.MediaInfo) -> np.ndarray:
    audio_path = Path(str(row.get("audio_path") or video))
    separate = audio_path.resolve() != video.resolve()
    if not separate and not info.has_audio:
        raise TalkError("video has no audio track and no separate audio file (audio_path = video_path)")
    return media.read_audio(audio_path, media.AUDIO_RATE, strict=True)  # corrupt / truncated audio: a reject


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


def process_clip(row: dict, cfg: CropConfig, size: int, tracker: faces.FaceTracker, out: Path) -> ClipResult:
    """Crop one manifest row into ``out`` (``paths.crops``); user-level problems become rejects.

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
        decoded = media.decoded_duration(video, "video")  # corrupt packets, or shorter than the container says
        if decoded.damaged:
            raise TalkError(decoded.describe().replace(f"{video}: ", "", 1))
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
        with atomic_dir(out / name) as tmp:
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
            "crop_dir": str(out / name),
            "source_clip_id": clip_id,
            "frame_offset": a,
        })
    return done(rows, rejects, n)


@functools.cache
def _worker_tracker(face: faces.FaceConfig) -> faces.FaceTracker:
    return faces.FaceTracker(face)


def _process_in_worker(job: tuple[dict, CropConfig, int, Path]) -> ClipResult:
    row, cfg, size, out = job
    return process_clip(row, cfg, size, _worker_tracker(cfg.face), out)


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


def process_all(jobs: list[dict], cfg: CropConfig, size: int, out: Path) -> Iterator[tuple[dict, ClipResult]]:
    """(row, result) for each row in order, cropped into ``out``: in worker processes
    (``pool_size``), or inline."""
    workers = pool_size(jobs, cfg.workers)
    if workers <= 1:
        for row in jobs:
            yield row, process_clip(row, cfg, size, _worker_tracker(cfg.face), out)
        return
    # forkserver: workers fork from a clean server that imported this module once (not from a
    # parent that may hold threads); spawn where there is no fork
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([__name__])
    with ctx.Pool(workers) as pool:
        results = pool.imap(_process_in_worker, [(row, cfg, size, out) for row in jobs])
        yield from zip(jobs, results)
