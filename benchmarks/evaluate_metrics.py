"""Benchmark: the `evaluate` metric library on real talking-head clips.

Three figures:

1. Cost per frame of each metric component, as a ratio to the baseline measured in the same run:
   PyAV decoding of the same frames (``media.read_video``, decode + RGB + 25 fps resampling). The
   frames are resized to ``--size`` (the default profile's 128 px crop).
2. Does the no-SyncNet lip-sync metric tell real sync apart? For every clip: the correlation of
   mouth opening with its *own* audio's loudness (offset 0 and best offset in +-5 frames) against
   the same with every *other* clip's audio (mismatched pairs, the control) and the frozen floor.
3. Do the pause and identity metrics read real clips as they should? Mouth closed in pauses and
   the pause / speech opening ratio with the clip's own audio vs other clips' audio (control);
   dlib-128 distance of each clip's frames to its own first frame (same person) and its drift vs
   the distance to the other clips' first frames (other people).

    .venv/bin/python benchmarks/evaluate_metrics.py [--frames 100] [--size 128] [--samples ../shared/samples/video]

Clips: the styletalk crops (+ same-length .wav) of ../shared/samples/video when present, else
clips generated from the test fixtures (tests/eval_fixture.py). Peak RSS is printed beside time.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
SAMPLES = ROOT.parent / "shared" / "samples" / "video"
NAMES = ("KristiNoem", "Obama_clip1", "andrew_clip_1", "feifeili_clip3", "reagan_clip1")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_clips(n_frames: int, size: int, samples: Path = SAMPLES):
    import cv2
    import numpy as np

    from talk.media import io as media

    clips, decode_s, decoded = [], 0.0, 0
    if samples.is_dir():
        for name in NAMES:
            t0 = time.perf_counter()
            frames = media.read_video(samples / f"styletalk__{name}.mp4")
            frames = frames[:n_frames] if n_frames else frames
            decode_s += time.perf_counter() - t0
            decoded += len(frames)
            audio = media.read_audio(samples / f"styletalk__{name}.wav")
            frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
            clips.append((name, frames, audio[: len(frames) * 640]))
        return clips, decode_s / decoded, "styletalk samples (real speech + video)"
    import tempfile

    from eval_fixture import FaceAnalyzer, face_image, make_clip

    fa = FaceAnalyzer(descriptors=False)
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(("a", "b")):
            face = face_image(name)
            frames, audio = make_clip(face, fa.landmarks(face, fa.detect(face)), "neutral", n_frames or 100, seed=i)
            path = Path(tmp) / f"{name}.mp4"
            media.write_video(path, frames)
            t0 = time.perf_counter()
            frames = media.read_video(path)
            decode_s += time.perf_counter() - t0
            decoded += len(frames)
            clips.append((f"fixture_{name}", frames, audio))
    return clips, decode_s / decoded, "generated from tests/fixtures (tone-burst audio)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=0, help="frames per clip (0 = all)")
    ap.add_argument("--size", type=int, default=128, help="px, crop side the metrics see")
    ap.add_argument("--samples", type=Path, default=SAMPLES, help="folder of the styletalk__*.mp4 / .wav samples")
    args = ap.parse_args()

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from talk.evaluation import judges
    from talk.evaluation.metrics import image, sync
    from talk.evaluation.metrics.face import FaceAnalyzer

    console = Console()
    clips, base_s, source = load_clips(args.frames, args.size, args.samples)
    fa = FaceAnalyzer()
    fer = judges.FERJudge()
    from talk.evaluation.metrics import appearance, identity

    timings: dict[str, list[float]] = {k: [] for k in ("detect + 68 landmarks", "dlib descriptor",
                                                         "PSNR + SSIM", "FER", "classifier features",
                                                         "face sharpness + ΔE + colour shift", "pauses + identity drift")}
    sync_rows = []
    tracks = {}
    for name, frames, audio in clips:
        n = len(frames)
        t0 = time.perf_counter()
        tr = fa.analyse(frames, descriptor_stride=0)
        timings["detect + 68 landmarks"].append((time.perf_counter() - t0) / n)
        k = min(10, n)
        t0 = time.perf_counter()
        for f, b in zip(frames[:k], tr.boxes[:k]):
            fa.descriptor(f, b)
        timings["dlib descriptor"].append((time.perf_counter() - t0) / k)
        shifted = np.roll(frames, 1, axis=0)
        t0 = time.perf_counter()
        image.psnr(shifted, frames)
        image.ssim(shifted, frames)
        timings["PSNR + SSIM"].append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        fer.predict_proba(frames, tr.boxes)
        timings["FER"].append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        judges.classifier_features(frames, tr.boxes, tr.landmarks, 0.1)
        timings["classifier features"].append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        masks = appearance.face_masks(tr.landmarks, *frames.shape[1:3])
        appearance.sharpness_ratio(shifted, masks, frames[0], masks[0])
        appearance.face_colour(shifted, masks, frames[0], masks[0])
        timings["face sharpness + ΔE + colour shift"].append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        loud = sync.loudness(audio, n)
        sync.pauses(loud, 30.0, 5, 1), sync.speech(loud, 30.0)
        identity.drift(np.linspace(0, 1, n), 25)
        timings["pauses + identity drift"].append((time.perf_counter() - t0) / n)
        tracks[name] = (tr, audio, n)
        fa.clear_cache()

    names = list(tracks)
    for i, name in enumerate(names):
        tr, audio, n = tracks[name]
        opening = sync.mouth_opening(tr.landmarks)
        own = sync.lagged_correlation(opening, sync.loudness(audio, n), 5)
        others = []  # the control: this clip's mouth against every other clip's audio
        for j, other in enumerate(names):
            if j != i:
                m = min(n, tracks[other][2])
                others.append(sync.lagged_correlation(opening[:m], sync.loudness(tracks[other][1], m), 5))
        others = np.stack(others)
        sync_rows.append((name, n, own[5], own.max(), sync.best_offset(own), others[:, 5].mean(), others.max(1).mean()))

    table = Table(title=f"evaluate metrics: cost per frame at {args.size} px ({source})")
    table.add_column("component")
    table.add_column("ms / frame", justify="right")
    table.add_column("x baseline", justify="right")
    table.add_row("baseline: PyAV decode + RGB", f"{base_s * 1e3:.2f}", "1.0")
    for k, v in timings.items():
        ms = float(np.median(v)) * 1e3
        table.add_row(k, f"{ms:.2f}", f"{ms / (base_s * 1e3):.1f}")
    console.print(table)

    t2 = Table(title="lip sync without SyncNet: r(mouth opening, loudness) with the clip's own audio vs "
               "other clips' audio (control, mean); the frozen floor scores 0")
    for col in ("clip", "frames", "own @0", "own best", "offset", "other @0", "other best"):
        t2.add_column(col, justify="right")
    for row in sync_rows:
        t2.add_row(row[0], str(row[1]), *(f"{v:.3f}" for v in row[2:4]), str(row[4]), *(f"{v:.3f}" for v in row[5:7]))
    t2.add_row("mean", "", *(f"{np.mean([r[k] for r in sync_rows]):.3f}" for k in (2, 3)), "",
               *(f"{np.mean([r[k] for r in sync_rows]):.3f}" for k in (5, 6)))
    console.print(t2)
    from talk.evaluation.config import Config

    cfg = Config()
    pause_identity_table(console, clips, tracks, fa, cfg)  # the default profile's evaluate section (params.yaml's values)
    per_clip_row = sum(float(np.median(v)) for k, v in timings.items() if k != "dlib descriptor")
    per_clip_row += float(np.median(timings["dlib descriptor"])) / cfg.descriptor_stride
    console.print(f"scoring cost ~{per_clip_row * 1e3:.1f} ms per frame per row "
                  f"({per_clip_row / base_s:.1f}x decoding); default profile ({cfg.max_clips} clips x {cfg.max_frames} frames, "
                  "real + model rows; the floor repeats one frame) "
                  f"~{per_clip_row * cfg.max_clips * cfg.max_frames * 2:.0f} s; peak RSS {rss_mb():.0f} MB")


def pause_identity_table(console, clips, tracks, fa, cfg) -> None:
    """Figure 3: pause and identity metrics on the real clips, each against a control."""
    import numpy as np
    from rich.table import Table

    from talk.evaluation.metrics import identity, sync

    def pause_stats(opening, audio, n):
        loud = sync.loudness(audio, n)
        p = sync.pauses(loud, cfg.pause_db, cfg.pause_min_frames, cfg.pause_trim)
        s = sync.speech(loud, cfg.pause_db)
        if not p.any() or not s.any():
            return int(p.sum()), float("nan"), float("nan")
        return int(p.sum()), float((opening[p] < cfg.closed_mouth_gap).mean()), float(opening[p].mean() / opening[s].mean())

    names = list(tracks)
    first = {}
    for name, frames, _ in clips:
        tr = tracks[name][0]
        first[name] = fa.descriptor(frames[0], tr.boxes[0])
    t3 = Table(title=f"pauses ({cfg.pause_min_frames}+ frames {cfg.pause_db:g} dB below speech) and dlib-128 identity "
               "on real clips: own audio / own first frame vs other clips' (control, mean)")
    for col in ("clip", "pause frames", "closed in pause", "pause/speech opening", "control: closed", "control: ratio",
                "id dist to own frame 0", "id drift", "id dist to others' frame 0"):
        t3.add_column(col, justify="right")
    stride = cfg.descriptor_stride
    for name, frames, audio in clips:
        tr, _, n = tracks[name]
        opening = sync.mouth_opening(tr.landmarks)
        own = pause_stats(opening, audio, n)
        ctrl = [pause_stats(opening[: min(n, tracks[o][2])], tracks[o][1], min(n, tracks[o][2])) for o in names if o != name]
        desc = np.full((n, 128), np.nan)
        for t in range(0, n, stride):
            desc[t] = fa.descriptor(frames[t], tr.boxes[t])
        dist = identity.distances(desc, first[name])
        others = [np.nanmean(identity.distances(desc, first[o])) for o in names if o != name]
        t3.add_row(name, str(own[0]), f"{own[1]:.2f}", f"{own[2]:.2f}", f"{np.nanmean([c[1] for c in ctrl]):.2f}",
                   f"{np.nanmean([c[2] for c in ctrl]):.2f}", f"{np.nanmean(dist):.3f}",
                   f"{identity.drift(dist, cfg.drift_window):+.3f}", f"{np.mean(others):.3f}")
    console.print(t3)


if __name__ == "__main__":
    main()
