"""Video and audio I/O through PyAV (its bundled FFmpeg; there is no ffmpeg program).

- ``probe``: what a file holds (duration, fps, size, audio) or a TalkError saying why it is unusable.
- ``read_video``: RGB uint8 frames resampled to a target fps (nearest source frame per output time).
- ``read_audio``: mono float32 at a target rate (PyAV resampler), from a video's audio or any audio file.
- ``decoded_duration``: the seconds that really decode (``Decoded``), against what the container says.

Damage: decoding goes packet by packet, so a corrupt packet mid-stream is skipped and counted
instead of ending the stream, and the decoded length is compared with the container's (and a
wav's own header). ``strict=True`` (render and embed inputs) turns any damage into a TalkError
naming the file; otherwise one warning says how many seconds were kept (docs/reliability.md).
- ``write_video``: H.264 (+ AAC audio) mp4, written atomically.
- ``write_wav``: 16-bit PCM wav, written atomically.
"""

from __future__ import annotations

import dataclasses
import wave
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_path

AUDIO_RATE = 16_000  # Hz: Whisper's rate, and the pipeline's
VIDEO_FPS = 25  # frames/s of every processed clip


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    path: Path
    duration: float  # seconds (video stream if any, else audio)
    fps: float  # 0 when there is no video stream
    width: int
    height: int
    n_frames: int  # estimated from duration * fps when the container does not say
    has_video: bool
    has_audio: bool
    audio_rate: int  # 0 when there is no audio stream
    audio_channels: int


def _open(path: Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise TalkError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise TalkError(f"{path}: empty file")
    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise TalkError(f"{path}: not a readable media file ({type(e).__name__})") from None


@dataclasses.dataclass
class Decoded:
    """What decoded of one stream: ``seconds`` of it against the ``expected`` seconds the container
    (or a wav header) announces, and the corrupt packets skipped on the way."""

    path: Path
    kind: str  # "video" | "audio"
    expected: float = 0.0  # s, 0 when the container does not say
    seconds: float = 0.0  # s: the end of the last decoded frame
    kept: float = 0.0  # s of frames that decoded (less than ``seconds`` when packets were skipped)
    errors: int = 0  # corrupt packets skipped
    first_error: float | None = None  # s into the stream of the first one

    def tolerance(self, fps: float = VIDEO_FPS) -> float:
        return max(0.1, 2.0 / fps)  # AAC priming / padding, a frame's rounding

    @property
    def short(self) -> bool:
        return self.expected > 0 and self.seconds < self.expected - self.tolerance()

    @property
    def damaged(self) -> bool:
        return self.errors > 0 or self.short

    def describe(self) -> str:
        """``<path>: damaged audio: corrupt data at 2.82 s of 7.00 s`` or ``... only 4.20 s of 7.00 s
        decode (truncated?)``."""
        of = f" of {self.expected:.2f} s" if self.expected > 0 else ""
        if self.errors:
            more = f" ({self.errors} corrupt packets)" if self.errors > 1 else ""
            return f"{self.path}: damaged {self.kind}: corrupt data at {self.first_error or 0:.2f} s{of}{more}"
        return f"{self.path}: damaged {self.kind}: only {self.seconds:.2f} s{of} decode (truncated?)"

    def report(self, strict: bool) -> None:
        """TalkError (``strict``) or one warning with the seconds kept, when damaged."""
        if not self.damaged:
            return
        if strict:
            raise TalkError(self.describe())
        runtime.log.warning("%s; kept %.2f s", self.describe(), self.kept)


def _expected(c: av.container.InputContainer, s, path: Path) -> float:
    """The stream's announced length: its duration, else the container's; for a PCM wav the data
    size its header declares (FFmpeg derives a truncated wav's length from the file size)."""
    seconds = 0.0
    if s.duration is not None and s.time_base is not None:
        seconds = float(s.duration * s.time_base)
    elif c.duration is not None:
        seconds = c.duration / av.time_base
    if s.type == "audio" and path.suffix.lower() == ".wav":
        try:
            with wave.open(str(path), "rb") as w:
                seconds = max(seconds, w.getnframes() / w.getframerate())
        except (wave.Error, EOFError, OSError, ZeroDivisionError):
            pass  # not a PCM wav the module reads (float, extensible): the container's length
    return seconds


def _frames(c: av.container.InputContainer, stream, report: Decoded, strict: bool) -> Iterator:
    """Decoded frames of ``stream``, packet by packet: a corrupt packet is counted in ``report``
    (TalkError at once when ``strict``) and skipped; a container that stops demuxing ends it."""
    tb = stream.time_base
    start = stream.start_time or 0

    def corrupt(packet) -> None:
        at = float((packet.pts - start) * tb) if packet is not None and packet.pts is not None and tb else report.seconds
        report.errors += 1
        if report.first_error is None:
            report.first_error = max(0.0, at)
        if strict:
            raise TalkError(report.describe())

    packets = c.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError:
            corrupt(None)
            return
        try:
            frames = packet.decode()
        except av.FFmpegError:
            corrupt(packet)
            continue
        for frame in frames:
            dur = (frame.samples / frame.sample_rate) if stream.type == "audio" else (
                1.0 / float(stream.average_rate) if stream.average_rate else 0.0)
            report.kept += dur
            if frame.pts is not None and tb:
                report.seconds = max(report.seconds, float((frame.pts - start) * tb) + dur)
            else:
                report.seconds += dur
            yield frame


def decoded_duration(path: Path | str, kind: str | None = None) -> Decoded:
    """Decode one stream (``kind``: "video" or "audio"; default the video if any) to its end and
    say how much of it decodes. Unreadable files are a TalkError as for ``probe``."""
    path = Path(path)
    with _open(path) as c:
        streams = c.streams.video if kind != "audio" and c.streams.video else c.streams.audio
        if kind == "video" and not c.streams.video or not streams:
            raise TalkError(f"{path}: no {kind or 'audio or video'} stream")
        stream = streams[0]
        if stream.type == "video":
            stream.thread_type = "AUTO"
        report = Decoded(path, stream.type, _expected(c, stream, path))
        for _ in _frames(c, stream, report, strict=False):
            pass
    return report


def probe(path: Path | str) -> MediaInfo:
    """Read a file's header and first frames; TalkError when it holds no decodable stream."""
    path = Path(path)
    with _open(path) as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        if v is None and a is None:
            raise TalkError(f"{path}: no audio or video stream")
        fps = float(v.average_rate or v.guessed_rate or 0) if v is not None else 0.0
        duration = 0.0
        s = v if v is not None else a
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif c.duration is not None:
            duration = c.duration / av.time_base
        n_frames = int(v.frames) if v is not None and v.frames else int(round(duration * fps))
        if v is not None:  # make sure at least one frame decodes (catches truncated / corrupt data)
            try:
                next(c.decode(v))
            except (StopIteration, av.FFmpegError):
                raise TalkError(f"{path}: video stream has no decodable frame") from None
        return MediaInfo(
            path=path,
            duration=duration,
            fps=fps,
            width=v.codec_context.width if v is not None else 0,
            height=v.codec_context.height if v is not None else 0,
            n_frames=n_frames,
            has_video=v is not None,
            has_audio=a is not None,
            audio_rate=a.codec_context.sample_rate if a is not None else 0,
            audio_channels=a.codec_context.channels if a is not None else 0,
        )


def iter_video(path: Path | str, fps: float | None = VIDEO_FPS, strict: bool = False) -> Iterator[np.ndarray]:
    """Yield RGB frames (H, W, 3) uint8; with ``fps``, resampled by picking the source frame
    shown at each output time ``k / fps`` (duplicates or drops frames, never blends).

    Damage (corrupt packets, a stream shorter than announced): TalkError when ``strict``, else a
    warning once the stream ends; frames lost to corrupt packets are covered by the one before."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise TalkError(f"{path}: no video stream")
        stream = c.streams.video[0]
        tb = stream.time_base
        start = stream.start_time or 0
        # one reformatter per stream: ~10x faster than frame.to_ndarray(format=...) (no per-frame set-up)
        reformatter = av.video.reformatter.VideoReformatter()

        def rgb(frame: av.VideoFrame) -> np.ndarray:
            return reformatter.reformat(frame, format="rgb24").to_ndarray()

        src_dt = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / (fps or VIDEO_FPS)
        report = Decoded(path, "video", _expected(c, stream, path))
        k = 0  # next output frame index
        prev, t = None, 0.0
        for frame in _frames(c, stream, report, strict):
            if fps is None:
                prev = frame
                yield rgb(frame)
                continue
            t = float((frame.pts - start) * tb) if frame.pts is not None else t + src_dt
            if prev is not None and k / fps < t - 1e-6:  # output times shown before this frame
                shown = rgb(prev)  # converted only when shown (dropped frames cost nothing)
                while k / fps < t - 1e-6:
                    yield shown
                    k += 1
            prev = frame
        if prev is None:
            raise TalkError(f"{path}: video does not decode" + (f" ({report.errors} corrupt packets)" if report.errors else ""))
        report.report(strict)
        if fps is not None:  # the last frame is shown until t + src_dt
            shown = rgb(prev)
            while k / fps < t + src_dt - 1e-6:
                yield shown
                k += 1


def read_video(path: Path | str, fps: float | None = VIDEO_FPS, strict: bool = False) -> np.ndarray:
    """All frames as (T, H, W, 3) uint8 (see ``iter_video``)."""
    frames = list(iter_video(path, fps, strict))
    if not frames:
        raise TalkError(f"{path}: no video frames")
    return np.stack(frames)


def read_audio(path: Path | str, rate: int = AUDIO_RATE, strict: bool = False) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at ``rate`` Hz from any file with an audio stream.

    Damage: TalkError when ``strict``, else a warning with the seconds kept; the samples of a
    corrupt packet are dropped (the rest joins up), as FFmpeg's own decoder does."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.audio:
            raise TalkError(f"{path}: no audio stream")
        # planar float at the target rate, channels kept: the mono mix is their mean (FFmpeg's
        # own downmix sums at 1/sqrt(2) and can clip loud stereo)
        resampler = av.AudioResampler(format="fltp", rate=rate)
        chunks = []
        stream = c.streams.audio[0]
        report = Decoded(path, "audio", _expected(c, stream, path))
        for frame in _frames(c, stream, report, strict):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().mean(axis=0))
        if not chunks and report.errors:
            raise TalkError(f"{path}: audio does not decode ({report.errors} corrupt packets)")
        if chunks:
            report.report(strict)
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().mean(axis=0))
    if not chunks:
        raise TalkError(f"{path}: audio stream is empty")
    return np.concatenate(chunks).astype(np.float32)


def write_wav(path: Path | str, samples: np.ndarray, rate: int = AUDIO_RATE) -> None:
    """16-bit PCM mono wav, atomically."""
    pcm = (np.clip(np.asarray(samples, np.float32), -1, 1) * 32767).astype("<i2")
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def write_video(
    path: Path | str,
    frames: Iterable[np.ndarray],
    fps: int = VIDEO_FPS,
    audio: np.ndarray | None = None,
    audio_rate: int = AUDIO_RATE,
    crf: int = 18,
    preset: str = "veryfast",
    pix_fmt: str = "yuv420p",
    audio_within_video: bool = False,
) -> int:
    """Encode RGB uint8 frames as H.264 mp4 (+ mono AAC audio), atomically. Returns frame count.

    ``pix_fmt="yuv444p"`` keeps full colour resolution (for intermediate crops); players want
    yuv420p. Frame sizes must be even for yuv420p. AAC codes whole frames of 1024 samples, so the
    audio track ends up to 64 ms (16 kHz) past the audio given; ``audio_within_video`` cuts it to
    whole AAC frames within the video's length instead (a render: the sound never outlasts the
    last picture; other writers keep every sample).
    """
    n = 0
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as c:
            v = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            v.pix_fmt = pix_fmt
            v.options = {"crf": str(crf), "preset": preset}
            a = None
            if audio is not None:
                a = c.add_stream("aac", rate=audio_rate, layout="mono")
            for img in frames:
                img = np.ascontiguousarray(img, dtype=np.uint8)
                if n == 0:
                    v.height, v.width = img.shape[:2]
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for packet in v.encode(frame):
                    c.mux(packet)
                n += 1
            for packet in v.encode(None):
                c.mux(packet)
            if a is not None:
                samples = np.clip(np.asarray(audio, np.float32), -1, 1).reshape(1, -1)
                if audio_within_video:
                    frame_size = a.codec_context.frame_size or 1024
                    limit = int(n * audio_rate / float(fps))
                    samples = samples[:, : limit - limit % frame_size]
                frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
                frame.sample_rate = audio_rate
                frame.pts = 0
                for packet in a.encode(frame):
                    c.mux(packet)
                for packet in a.encode(None):
                    c.mux(packet)
        if n == 0:
            raise TalkError(f"{path}: no frames to write")
    return n


def encode_image(rgb: np.ndarray, ext: str = ".png", params: Sequence[int] = ()) -> bytes:
    """RGB uint8 (H, W, 3) -> encoded image bytes (PNG by default); raises when OpenCV cannot encode."""
    import cv2

    ok, buf = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR), list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {rgb.shape} image as {ext}")
    return buf.tobytes()


def write_image(path: Path | str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image (format from the suffix), atomically."""
    data = encode_image(rgb, Path(path).suffix or ".png")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
