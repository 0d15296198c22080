"""Benchmark: the `crop_align` stage against pure PyAV decoding of the same clip.

For each video: the baseline is PyAV decode-to-RGB of every source frame (``frame.to_ndarray``,
single thread, the floor of any stage that reads the video); the stage is ``process_clip`` as the
stage runs it (probe, audio read + resample, decode at 25 fps, face tracking, smoothing, warping,
H.264 encode, writing). Both in source frames per second, best of ``--repeat`` runs; the ratio
stage / baseline is the figure (goal >= 0.5); "CPU ratio" is the same with process CPU time (both
threads of the stage counted), steadier on a busy machine. Also the share of the stage spent decoding + tracking
(first pass), the whole stage over all the clips with its worker processes (``crop_align.workers``)
against single-thread decoding of the same clips, and peak RSS (this process; workers not included).

    .venv/bin/python benchmarks/crop_align.py [--video V.mp4 [--audio A.wav]] [--hd] [--repeat 3] [--set crop_align.face.crop=template]

Default videos: the real clips of ../shared/samples/video when present, else a generated clip.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
SAMPLES = ROOT.parent / "shared" / "samples" / "video"
DEFAULT = ("videoretalking__face_1.mp4", "videoretalking__face_5.mp4", "styletalk__Obama_clip1.mp4")


def decode(path: Path) -> tuple[float, float, int]:
    """Wall s, CPU s (this process), frames of PyAV decode-to-RGB."""
    import av

    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with av.open(str(path)) as c:
        for frame in c.decode(c.streams.video[0]):
            frame.to_ndarray(format="rgb24")
            n += 1
    return time.perf_counter() - t0, time.process_time() - c0, n


def generated(tmp: Path, hd: bool = False) -> tuple[Path, Path]:
    """A talking-head-sized clip from the test portrait: 224x224 (6 s), or MEAD-like 1920x1080 (3 s)."""
    import numpy as np
    from test_crop_align import moving_face, write_video

    n = 75 if hd else 150
    kw = {"hw": (1080, 1920), "px": 640} if hd else {}
    frames, _ = moving_face(n, lambda t: (8 * np.sin(t / 9), 5 * np.cos(t / 11)), **kw)
    video = write_video(tmp / ("generated_1080p.mp4" if hd else "generated.mp4"), frames, audio_seconds=n / 25)
    return video, video


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", type=Path, action="append", default=[], help="video file (repeatable)")
    ap.add_argument("--audio", type=Path, action="append", default=[], help="separate audio for each --video")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    ap.add_argument("--hd", action="store_true", help="add a generated MEAD-like 1920x1080 clip")
    ap.add_argument("--set", action="append", default=[], help="params override, e.g. crop_align.face.crop=template")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes for the whole-stage run")
    args = ap.parse_args()

    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from talk.core import params as P
    from talk.media import cropping, faces
    from talk.media import io as media
    from talk.stages import crop_align

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs: list[tuple[Path, Path]] = []
        if args.video:
            audios = args.audio + [None] * (len(args.video) - len(args.audio))
            jobs = [(v, a or v) for v, a in zip(args.video, audios)]
        elif SAMPLES.is_dir():
            for name in DEFAULT:
                v = SAMPLES / name
                wav = v.with_suffix(".wav")
                jobs.append((v, wav if wav.is_file() else v))
        else:
            jobs.append(generated(tmp))
        if args.hd:
            jobs.append(generated(tmp, hd=True))

        params = P.load(ROOT / "params.yaml", [f"paths.crops={tmp / 'crops'}", *args.set])
        cfg, size = params.crop_align, params.model.image_size
        tracker = faces.FaceTracker(cfg.face)
        table = Table(title=f"crop_align vs PyAV decode-to-RGB ({cfg.face.crop} crop, {size} px, best of {args.repeat})")
        for col in ("video", "size", "src frames", "decode fps", "stage fps", "ratio", "CPU ratio", "decode+track", "out frames"):
            table.add_column(col, justify="right")
        decode_s = 0.0
        for k, (video, audio) in enumerate(jobs):
            info = media.probe(video)
            base = base_cpu = stage_s = stage_cpu = track_s = float("inf")
            n_out = 0
            for r in range(args.repeat):  # interleaved, so a busy moment hurts both sides alike
                wall, cpu, n_src = decode(video)
                base, base_cpu = min(base, wall), min(base_cpu, cpu)
                row = {"clip_id": f"bench{k}_{r}", "video_path": str(video), "audio_path": str(audio)}
                t0, c0 = time.perf_counter(), time.process_time()
                result = cropping.process_clip(row, cfg, size, tracker, params.paths.crops)
                stage_s, stage_cpu = min(stage_s, time.perf_counter() - t0), min(stage_cpu, time.process_time() - c0)
                n_out = sum(int(x["n_frames"]) for x in result.rows)
                if result.rejects:
                    print(f"{video.name}: rejected: {result.rejects}")
                t0 = time.perf_counter()
                tracker.track(media.iter_video(video))
                track_s = min(track_s, time.perf_counter() - t0)
            decode_s += base
            table.add_row(
                video.name, f"{info.width}x{info.height}", str(n_src), f"{n_src / base:.0f}", f"{n_src / stage_s:.0f}",
                f"{base / stage_s:.2f}", f"{base_cpu / stage_cpu:.2f}", f"{track_s / stage_s:.0%}", str(n_out),
            )
        Console().print(table)

        # the whole stage over all the clips, with its worker processes
        manifest = tmp / "manifest.csv"
        pd.DataFrame([{"clip_id": f"clip{k}", "video_path": str(v), "audio_path": str(a)} for k, (v, a) in enumerate(jobs)]).to_csv(manifest, index=False)
        params = P.load(ROOT / "params.yaml", [
            f"paths.manifest={manifest}", f"paths.crops={tmp / 'all'}", f"crop_align.workers={args.workers}", *args.set,
        ])
        workers = args.workers
        t0 = time.perf_counter()
        crop_align.run(params)
        wall = time.perf_counter() - t0
        print(
            f"whole stage, {len(jobs)} clips, {workers} workers: {wall:.2f} s vs {decode_s:.2f} s of single-thread "
            f"decode-to-RGB of the same clips: ratio {decode_s / wall:.2f}"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
