"""Benchmark: what noticing damaged media costs (talk/media/io.py, docs/reliability.md).

Baselines: the readers as they were before (PyAV's own ``container.decode`` of every frame, RGB
through one reformatter; audio decoded, resampled to 16 kHz, mono mean, joined). Measured against
them, in the same run on the same clip:

- ``iter_video``: packet-by-packet decoding with corrupt-packet counting and the length check;
- ``decoded_duration``: the extra pass discover and crop_align now make (decode, no RGB);
- ``read_audio`` against PyAV decode + resample of the same audio track.

Best of ``--repeat`` runs, wall seconds, ratios to the baseline, peak RSS of this process.

    .venv/bin/python benchmarks/decode_checks.py [--video V.mp4] [--seconds 10] [--side 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, help="a clip with audio (default: a generated one)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import av
    import numpy as np
    from render_fixture import speech

    from talk.media import io as media

    video = args.video
    if video is None:
        video = Path(tempfile.mkdtemp()) / "clip.mp4"
        rng = np.random.default_rng(0)
        n = int(args.seconds * 25)
        base = rng.integers(0, 255, (args.side, args.side, 3), dtype=np.uint8)
        frames = (np.roll(base, 3 * i, axis=1) for i in range(n))
        media.write_video(video, frames, audio=speech(args.seconds))

    def pyav_video():
        with av.open(str(video)) as c:
            s = c.streams.video[0]
            reformatter = av.video.reformatter.VideoReformatter()
            return [reformatter.reformat(f, format="rgb24").to_ndarray() for f in c.decode(s)]

    def pyav_audio():
        with av.open(str(video)) as c:
            r = av.AudioResampler(format="fltp", rate=16000)
            chunks = [o.to_ndarray().mean(axis=0) for f in c.decode(c.streams.audio[0]) for o in r.resample(f)]
            chunks += [o.to_ndarray().mean(axis=0) for o in r.resample(None)]
        return np.concatenate(chunks).astype(np.float32)

    assert len(pyav_video()) == len(list(media.iter_video(video, fps=None)))  # the same frames
    assert len(pyav_audio()) == len(media.read_audio(video))
    base_v = best(pyav_video, args.repeat)
    iter_v = best(lambda: list(media.iter_video(video, fps=None)), args.repeat)
    check_v = best(lambda: media.decoded_duration(video, "video"), args.repeat)
    base_a = best(pyav_audio, args.repeat)
    read_a = best(lambda: media.read_audio(video), args.repeat)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"clip: {video} ({media.probe(video).duration:.1f} s)")
    print(f"{'what':<46}{'wall s':>9}{'ratio':>9}")
    print(f"{'PyAV decode + RGB (old iter_video, baseline)':<46}{base_v:>9.3f}{1.0:>9.2f}")
    print(f"{'iter_video (packet-wise, checked)':<46}{iter_v:>9.3f}{iter_v / base_v:>9.2f}")
    print(f"{'decoded_duration (discover/crop_align pass)':<46}{check_v:>9.3f}{check_v / base_v:>9.2f}")
    print(f"{'PyAV decode + resample (old read_audio)':<46}{base_a:>9.3f}{1.0:>9.2f}")
    print(f"{'read_audio (packet-wise, checked)':<46}{read_a:>9.3f}{read_a / base_a:>9.2f}")
    print(f"peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
