"""Stage `crop_align` and talk/media/faces.py on tiny videos made from real portraits
(tests/fixtures/faces, moved by affine shifts), including bad inputs."""

from __future__ import annotations

import logging
import os
import shutil
import wave
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pytest

from talk.cli.main import app
from talk.core import params as P
from talk.core import runtime
from talk.core.errors import TalkError
from talk.data.manifest import read_manifest
from talk.media import cropping, faces
from talk.media import io as media
from talk.stages import crop_align

FIX = Path(__file__).parent / "fixtures" / "faces"
FPS = media.VIDEO_FPS
SR = media.AUDIO_RATE
HW = (224, 224)  # test video size (H, W)


# --------------------------------------------------------------------------------------------
# Tiny media


def portrait(name: str = "face_a.jpg", px: int = 160) -> np.ndarray:
    img = cv2.imread(str(FIX / name))[..., ::-1]
    return np.ascontiguousarray(cv2.resize(img, (px, px), interpolation=cv2.INTER_AREA))


def compose(placements, hw=HW) -> np.ndarray:
    """Grey canvas with each (image, x, y) pasted at sub-pixel offset (x, y)."""
    canvas = np.full((*hw, 3), 96, np.uint8)
    for img, x, y in placements:
        M = np.float32([[1, 0, x], [0, 1, y]])
        cv2.warpAffine(img, M, (hw[1], hw[0]), dst=canvas, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    return canvas


def moving_face(n: int, shift=lambda t: (0.0, 0.0), hw=HW, px=160):
    """(n, H, W, 3) frames of face_a moving by ``shift(t)``, and its offsets (n, 2)."""
    img = portrait("face_a.jpg", px)
    x0, y0 = (hw[1] - px) / 2, (hw[0] - px) / 2
    offsets = np.array([(x0 + shift(t)[0], y0 + shift(t)[1]) for t in range(n)])
    frames = np.stack([compose([(img, x, y)], hw) for x, y in offsets])
    return frames, offsets


def tone(seconds: float, rate: int = SR, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.repeat((0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None], channels, 0)  # (C, N)


def write_video(path: Path, frames: np.ndarray, audio_seconds: float | None = None) -> Path:
    audio = tone(audio_seconds)[0] if audio_seconds else None
    media.write_video(path, frames, fps=FPS, audio=audio, crf=18)
    return path


def write_audio(path: Path, seconds: float, rate: int, channels: int = 1, fmt: str = "wav", codec: str = "pcm_s16le") -> Path:
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w", format=fmt) as c:
        stream = c.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(tone(seconds, rate, channels), format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return path


def row(clip_id: str, video: Path, audio: Path | None = None) -> dict:
    return {"clip_id": clip_id, "video_path": str(video), "audio_path": str(audio or video)}


def read_wav(path: Path) -> tuple[np.ndarray, int, int]:
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32767
        return data, w.getframerate(), w.getnchannels()


def dominant_hz(x: np.ndarray, rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


@pytest.fixture
def stage(tmp_path, root):
    """Run the real stage on manifest rows into tmp_path/<out>; returns the output manifest."""

    def run(rows, *sets, out="crops", shard=None, merge=False):
        manifest = tmp_path / "manifest.csv"
        full = [
            {"speaker": "s", "emotion": "", "level": 0, "duration": 0.0, "fps": 25.0, "width": HW[1], "height": HW[0],
             "has_audio": True, "split": "train", "subset": "wild", "gt_path": "", **r}
            for r in rows
        ]
        pd.DataFrame(full).to_csv(manifest, index=False)
        overrides = [f"paths.manifest={manifest}", f"paths.crops={tmp_path / out}", "crop_align.min_frames=10", "crop_align.workers=1", *sets]
        return crop_align.run(P.load(root / "params.yaml", overrides), shard=shard, merge=merge)

    return run


@pytest.fixture
def talk_log(caplog):
    """Capture the `talk` logger (runtime.setup may have stopped its propagation)."""
    old = runtime.log.propagate
    runtime.log.propagate = True
    caplog.set_level(logging.INFO, logger="talk")
    yield caplog
    runtime.log.propagate = old


def rejects(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "rejects.csv", keep_default_na=False)


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.glob(".*.tmp")]


# --------------------------------------------------------------------------------------------
# The normal case: files, formats, landmarks on the face


@pytest.fixture
def one_clip(tmp_path, stage):
    n = 40
    frames, offsets = moving_face(n, lambda t: (6 * np.sin(t / 6), 4 * np.cos(t / 7)))
    video = write_video(tmp_path / "talk.mp4", frames, audio_seconds=n / FPS)
    manifest = stage([row("clip_a", video)])
    return manifest, tmp_path / "crops" / "clip_a", frames, offsets


def test_writes_the_clip_folder_and_manifest(one_clip):
    manifest, folder, frames, _ = one_clip
    n = len(frames)
    assert list(manifest["clip_id"]) == ["clip_a"]
    assert int(manifest["n_frames"][0]) == n and manifest["crop_dir"][0] == str(folder)
    assert manifest["source_clip_id"][0] == "clip_a" and int(manifest["frame_offset"][0]) == 0
    for col in ("speaker", "split", "subset", "gt_path"):
        assert col in manifest.columns
    info = media.probe(folder / "frames.mp4")
    assert (info.width, info.height, round(info.fps)) == (128, 128, 25) and not info.has_audio
    with av.open(str(folder / "frames.mp4")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"
    assert len(media.read_video(folder / "frames.mp4", None)) == n
    lm, M = np.load(folder / "landmarks.npy"), np.load(folder / "transforms.npy")
    assert lm.shape == (n, 68, 2) and lm.dtype == np.float32
    assert M.shape == (n, 2, 3) and M.dtype == np.float32
    audio, rate, channels = read_wav(folder / "audio.wav")
    assert (rate, channels, len(audio)) == (16000, 1, n * 640)
    assert abs(dominant_hz(audio) - 440) < 5
    out = folder.parent
    assert (out / "params.yaml").is_file() and (out / ".done" / "clip_a.json").is_file()
    assert rejects(out).empty and not leftovers(out)


def test_landmarks_land_on_the_face_in_crop_coords(one_clip):
    _, folder, frames, offsets = one_clip
    lm, M = np.load(folder / "landmarks.npy"), np.load(folder / "transforms.npy")
    # ground truth: the face only translates, so its landmarks are frame 0's plus the offset
    tracker = faces.FaceTracker(faces.FaceConfig())
    truth0, _ = tracker.fit(frames[0], tracker.detect(frames[0])[0])
    truth = truth0[None] + (offsets - offsets[0])[:, None, :]  # (T, 68, 2) source px
    err = np.linalg.norm(faces.apply_affine(M.astype(np.float64), truth) - lm, axis=-1)
    assert err.mean() < 1.5, err.mean()
    # independently: dlib on the written crops finds the same points
    crops = media.read_video(folder / "frames.mp4", None)
    upsampled = faces.FaceTracker(faces.FaceConfig(upsample=1))
    for t in (0, 20, 39):
        found = upsampled.detect(crops[t])
        assert len(found) == 1
        own, _ = upsampled.fit(crops[t], found[0])
        assert np.linalg.norm(own - lm[t], axis=-1).mean() < 3.0
    # the face is centred in the crop (box mode) and the landmarks stay inside it
    assert np.all((lm > 0) & (lm < 128))
    assert np.abs(lm.mean((0, 1)) - 63.5).max() < 12


# --------------------------------------------------------------------------------------------
# Bad input: each is rejected with its reason and leaves no folder; good clips still go through


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_or_truncated_video_is_rejected(tmp_path, stage, damage):
    frames, _ = moving_face(30)
    good = write_video(tmp_path / "good.mp4", frames, audio_seconds=30 / FPS)
    bad = tmp_path / "bad.mp4"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else np.random.default_rng(0).bytes(4000))
    manifest = stage([row("good", good), row("bad", bad)])
    out = tmp_path / "crops"
    assert list(manifest["clip_id"]) == ["good"]
    rej = rejects(out)
    assert list(rej["clip_id"]) == ["bad"] and "not a readable media file" in rej["reason"][0]
    assert not (out / "bad").exists() and not leftovers(out)


def test_video_without_audio_needs_a_separate_audio_file(tmp_path, stage):
    frames, _ = moving_face(30)
    silent = write_video(tmp_path / "silent.mp4", frames)
    wav = write_audio(tmp_path / "speech.wav", 30 / FPS, SR)
    manifest = stage([row("muted", silent), row("paired", silent, wav)])
    assert list(manifest["clip_id"]) == ["paired"]
    rej = rejects(tmp_path / "crops")
    assert list(rej["clip_id"]) == ["muted"] and "no audio track" in rej["reason"][0]


def test_zero_length_file_is_rejected(tmp_path, stage):
    frames, _ = moving_face(30)
    good = write_video(tmp_path / "good.mp4", frames, audio_seconds=30 / FPS)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    stage([row("good", good), row("empty", empty)])
    rej = rejects(tmp_path / "crops")
    assert list(rej["clip_id"]) == ["empty"] and "empty file" in rej["reason"][0]


def test_no_face_at_all_is_rejected_and_an_empty_result_fails(tmp_path, stage):
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (30, *HW, 3), dtype=np.uint8).reshape(-1, HW[1], 3), (9, 9), 3)
    video = write_video(tmp_path / "wall.mp4", noise.reshape(30, *HW, 3), audio_seconds=30 / FPS)
    with pytest.raises(TalkError, match="no clip survived"):
        stage([row("wall", video)])
    out = tmp_path / "crops"
    rej = rejects(out)
    assert list(rej["clip_id"]) == ["wall"] and rej["reason"][0] == "no face found"
    assert not (out / "manifest.csv").exists() and not (out / "wall").exists()


def test_several_faces_the_largest_is_tracked_and_logged(tmp_path, stage, talk_log):
    hw = (224, 400)
    # face_a at 160 px (face ~94 px) on the left, face_b at 192 px (face ~72 px) on the right
    frames = np.stack([compose([(portrait(), 8, 32), (portrait("face_b.jpg", 192), 204, 16)], hw) for _ in range(30)])
    video = write_video(tmp_path / "two.mp4", frames, audio_seconds=30 / FPS)
    stage([row("two", video)])
    assert "up to 2 faces in view: tracking the largest" in talk_log.text
    M = np.load(tmp_path / "crops" / "two" / "transforms.npy")[0].astype(np.float64)
    centre = faces.apply_affine(cv2.invertAffineTransform(M), np.array([[63.5, 63.5]]))[0]
    assert 8 < centre[0] < 168, centre  # inside face_a's picture, not face_b's (x >= 204)


@pytest.mark.parametrize("gap, pieces, buffer_mb", [(6, 1, 1024), (30, 2, 1024), (30, 2, 0)])
def test_face_leaving_the_frame_is_interpolated_or_splits_the_clip(tmp_path, stage, talk_log, gap, pieces, buffer_mb):
    before, after = 20, 20
    n = before + gap + after
    away = lambda t: (600.0, 0.0) if before <= t < before + gap else (2 * np.sin(t / 5), 0.0)  # noqa: E731
    frames, _ = moving_face(n, away)
    video = write_video(tmp_path / "leave.mp4", frames, audio_seconds=n / FPS)
    manifest = stage([row("leave", video)], f"crop_align.buffer_mb={buffer_mb}")  # 0: decoded twice
    if pieces == 1:
        assert list(manifest["clip_id"]) == ["leave"] and int(manifest["n_frames"][0]) == n
        assert f"leave: {gap} frames without a face interpolated" in talk_log.text
        lm = np.load(tmp_path / "crops" / "leave" / "landmarks.npy")
        assert np.isfinite(lm).all()
    else:
        assert list(manifest["clip_id"]) == ["leave_s0", "leave_s1"]
        # the frames without the face are cut out exactly (lost-face bisection)
        assert list(manifest["frame_offset"]) == [0, before + gap]
        assert list(manifest["n_frames"]) == [before, after]
        assert set(manifest["source_clip_id"]) == {"leave"}
        for name, k in (("leave_s0", before), ("leave_s1", after)):
            audio, _, _ = read_wav(tmp_path / "crops" / name / "audio.wav")
            assert len(audio) == k * 640
            crops = media.read_video(tmp_path / "crops" / name / "frames.mp4", None)
            assert len(crops) == k and crops.std(axis=(1, 2, 3)).min() > 20  # a face in every crop, never the bare canvas


@pytest.mark.parametrize(
    "name, rate, channels, fmt, codec",
    [
        ("a8k.wav", 8000, 1, "wav", "pcm_s16le"),
        ("a48k.wav", 48000, 1, "wav", "pcm_s16le"),
        ("stereo.wav", 44100, 2, "wav", "pcm_s16le"),
        ("speech.mp3", 44100, 1, "mp3", "libmp3lame"),
        ("speech.m4a", 44100, 2, "mp4", "aac"),
    ],
)
def test_audio_formats_become_16k_mono_of_the_video_length(tmp_path, stage, name, rate, channels, fmt, codec):
    n = 25
    frames, _ = moving_face(n)
    video = write_video(tmp_path / "silent.mp4", frames)
    audio = write_audio(tmp_path / name, n / FPS + 0.1, rate, channels, fmt, codec)
    manifest = stage([row("clip", video, audio)])
    assert int(manifest["n_frames"][0]) == n
    samples, sr, ch = read_wav(tmp_path / "crops" / "clip" / "audio.wav")
    assert (sr, ch, len(samples)) == (16000, 1, n * 640)
    assert abs(dominant_hz(samples) - 440) < 5
    mid = samples[len(samples) // 4 : 3 * len(samples) // 4]  # away from codec priming at the edges
    # 0.4 / sqrt(2) = 0.28; FFmpeg's stereo downmix is (L + R) / sqrt(2): 0.4 for identical channels
    assert 0.2 < np.sqrt(np.mean(mid**2)) < (0.35 if channels == 1 else 0.45)


@pytest.mark.parametrize("audio_seconds, expected", [(2.0, 30), (0.8, 20)])
def test_audio_and_video_of_different_lengths_are_trimmed_to_the_shorter(tmp_path, stage, talk_log, audio_seconds, expected):
    frames, _ = moving_face(30)
    video = write_video(tmp_path / "silent.mp4", frames)
    audio = write_audio(tmp_path / "speech.wav", audio_seconds, SR)
    manifest = stage([row("clip", video, audio)])
    assert int(manifest["n_frames"][0]) == expected
    assert len(media.read_video(tmp_path / "crops" / "clip" / "frames.mp4", None)) == expected
    samples, _, _ = read_wav(tmp_path / "crops" / "clip" / "audio.wav")
    assert len(samples) == expected * 640
    assert "trimmed to the shorter" in talk_log.text


# --------------------------------------------------------------------------------------------
# Smoothing, crop modes, the faces library


def _roughness(M: np.ndarray) -> float:
    """Mean absolute second difference of the transforms' translation (px per frame^2)."""
    return float(np.abs(np.diff(M[:, :, 2], 2, axis=0)).mean())


def test_smoothing_reduces_jitter(tmp_path, stage):
    n = 40
    jitter = np.random.default_rng(1).uniform(-2.5, 2.5, (n, 2))  # px, a shaky but static head
    frames, _ = moving_face(n, lambda t: tuple(jitter[t]))
    video = write_video(tmp_path / "shaky.mp4", frames, audio_seconds=n / FPS)
    stage([row("shaky", video)], "crop_align.face.smooth_window=1", "crop_align.face.smooth_landmarks=1", out="raw")
    stage([row("shaky", video)], out="smooth")
    stage([row("shaky", video)], "crop_align.face.crop_motion=fixed", out="fixed")
    raw = np.load(tmp_path / "raw" / "shaky" / "transforms.npy")
    smooth = np.load(tmp_path / "smooth" / "shaky" / "transforms.npy")
    fixed = np.load(tmp_path / "fixed" / "shaky" / "transforms.npy")
    assert _roughness(raw) > 1.0  # the crop follows the shake without smoothing
    assert _roughness(smooth) < 0.25 * _roughness(raw)
    assert np.ptp(fixed, axis=0).max() == 0  # one crop for the whole clip


def test_prefetch_keeps_order_raises_and_stops_early():
    assert list(cropping.prefetch(range(50), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise TalkError("decode failed")

    with pytest.raises(TalkError, match="decode failed"):
        list(cropping.prefetch(broken()))
    closed = []

    def endless():
        try:
            k = 0
            while True:
                yield k
                k += 1
        finally:
            closed.append(True)

    it = cropping.prefetch(endless(), depth=2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert closed == [True]


def test_savgol_is_zero_phase_and_keeps_polynomials():
    t = np.arange(50, dtype=np.float64)
    quad = 0.03 * t**2 - t + 4
    np.testing.assert_allclose(faces.savgol(quad, 9, 2), quad, atol=1e-9)  # no lag, edges included
    noise = np.random.default_rng(0).normal(size=(400, 3))
    assert faces.savgol(noise, 15, 2).std() < 0.6 * noise.std()
    assert faces.savgol(noise[:4], 15, 2).shape == (4, 3)  # shorter than the window
    np.testing.assert_array_equal(faces.savgol(noise, 1, 2), noise)


def test_template_mode_puts_eyes_and_mouth_on_the_template(tmp_path, stage):
    frames, _ = moving_face(30, lambda t: (3 * np.sin(t / 4), 0.0))
    video = write_video(tmp_path / "t.mp4", frames, audio_seconds=30 / FPS)
    stage([row("t", video)], "crop_align.face.crop=template", "crop_align.face.smooth_window=1")
    lm = np.load(tmp_path / "crops" / "t" / "landmarks.npy").astype(np.float64)
    expected = faces.template(faces.FaceConfig()) * 128 - 0.5
    err = np.linalg.norm(faces.five_points(lm) - expected, axis=-1).mean()
    assert err < 3.0, err  # least-squares fit of 5 points: a few px of residual


def test_warp_pads_with_edge_or_black_never_a_mirror():
    frame = np.tile(np.arange(100, dtype=np.uint8)[None, :, None] + 50, (100, 1, 3))  # horizontal ramp
    M = np.array([[1.0, 0, 40], [0, 1.0, 0]])  # the crop's left 40 px lie outside the frame
    edge = faces.warp(frame, M, 64, "edge")
    black = faces.warp(frame, M, 64, "constant")
    assert (edge[:, :40] == 50).all() and (black[:, :38] == 0).all()
    np.testing.assert_array_equal(edge[:, 41:], frame[:64, 1:24])
    small = faces.warp(np.full((400, 400, 3), 200, np.uint8), np.array([[0.2, 0, 0], [0, 0.2, 0]]), 64, "edge")
    assert (small == 200).all()  # the area-downscaled path keeps flat colour


def test_align_image_crops_a_portrait(tmp_path):
    aligner = faces.Aligner(faces.FaceConfig(), 128)
    img = compose([(portrait("face_b.jpg", 192), 20, 10)], (240, 240))
    crop, lm, M = aligner.align_image(img)
    assert crop.shape == (128, 128, 3) and lm.shape == (68, 2) and M.shape == (2, 3)
    assert np.all((lm > 0) & (lm < 128))
    with pytest.raises(TalkError, match="no face found"):
        aligner.align_image(np.full((120, 120, 3), 128, np.uint8))


def test_five_keypoints_give_the_box_the_landmark_predictor_expects():
    """SCRFD returns five keypoints and its own box convention: the tracker gets a dlib-style box."""
    tracker = faces.FaceTracker(faces.FaceConfig())
    for name, px in (("face_a.jpg", 200), ("face_b.jpg", 192)):
        img = compose([(portrait(name, px), 12, 8)], (224, 224))
        det = tracker.detect(img)[0]
        lm, _ = tracker.fit(img, det)
        box = faces.box_from_five(faces.five_points(lm.astype(np.float64)))
        assert faces.iou(box[None], det)[0] > 0.6, (name, box, det)  # dlib box sizes step by 1/6 (HOG pyramid)
        via_points, _ = tracker.fit(img, box)
        assert np.linalg.norm(via_points - lm, axis=-1).mean() < 2.0


def test_insightface_without_its_pack_names_the_folder(tmp_path):
    cfg = faces.FaceConfig(detector="insightface", insightface_root=tmp_path / "w")
    with pytest.raises(TalkError, match=str(tmp_path / "w" / "models" / "buffalo_l")):
        faces.make_detector(cfg)


def test_even_smoothing_window_is_a_params_error(root):
    with pytest.raises(TalkError, match="must be odd"):
        P.load(root / "params.yaml", ["crop_align.face.smooth_window=4"])


# --------------------------------------------------------------------------------------------
# Shards, resume, CLI


def test_shards_write_their_manifests_and_merge(tmp_path, stage, runner, root, monkeypatch):
    frames, _ = moving_face(25)
    video = write_video(tmp_path / "v.mp4", frames, audio_seconds=1.0)
    ids = [f"clip{k}" for k in range(8)]
    by_shard = {i: [c for c in ids if zlib.crc32(c.encode()) % 2 == i][:2] for i in (0, 1)}
    rows = [row(c, video) for c in by_shard[0] + by_shard[1]]
    out = tmp_path / "crops"
    first = stage(rows, shard="0/2")
    assert sorted(first["clip_id"]) == sorted(by_shard[0])
    assert (out / "manifest.shard-0-of-2.csv").is_file() and not (out / "manifest.csv").exists()
    with pytest.raises(TalkError, match="1/2 not finished"):
        stage(rows, merge=True)
    merged = stage(rows, shard="1/2")  # the last shard merges
    assert sorted(merged["clip_id"]) == sorted(by_shard[0] + by_shard[1])
    assert list(pd.read_csv(out / "manifest.csv")["clip_id"]) == sorted(by_shard[0] + by_shard[1])
    (out / "manifest.csv").unlink()
    monkeypatch.chdir(root)
    result = runner.invoke(app, ["crop-align", "--merge", "--set", f"paths.crops={out}"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out / "manifest.csv")) == 4
    with pytest.raises(TalkError, match="need 0 <= i < n"):
        stage(rows, shard="2/2")


def test_resume_skips_done_clips(tmp_path, stage, talk_log):
    frames, _ = moving_face(25)
    video = write_video(tmp_path / "v.mp4", frames, audio_seconds=1.0)
    rows = [row("a", video), row("b", video)]
    stage(rows, "crop_align.workers=2")  # two clips in two worker processes
    out = tmp_path / "crops"
    stamp = {c: (out / c / "frames.mp4").stat().st_mtime_ns for c in ("a", "b")}
    shutil.rmtree(out / "b")  # as if the run had been killed before b
    manifest = stage(rows, "crop_align.workers=2")
    assert list(manifest["clip_id"]) == ["a", "b"]
    assert (out / "a" / "frames.mp4").stat().st_mtime_ns == stamp["a"]  # reused
    assert "a: rejected" not in talk_log.text and "(1 done before)" in talk_log.text
    assert (out / "b" / "frames.mp4").is_file()
    stage(rows, "crop_align.crf=20")  # another config: redone
    assert (out / "a" / "frames.mp4").stat().st_mtime_ns != stamp["a"]
    (out / ".crops.killed.tmp").mkdir()  # what a killed run leaves
    stage(rows[:1], "crop_align.crf=20")  # b left the manifest: its folder and record go
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [".done", "a"]
    assert [p.name for p in (out / ".done").iterdir()] == ["a.json"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"clip_id": "a", "video_path": "v.mp4"}], "lacks column"),
        ([{"clip_id": "a/b", "video_path": "v", "audio_path": "v"}], "not a safe folder name"),
        ([{"clip_id": "a", "video_path": "v", "audio_path": "v"}] * 2, "more than once"),
        ([{"clip_id": c, "video_path": "v", "audio_path": "v"} for c in ("a", "a_s1")], "collide"),
    ],
)
def test_bad_manifests_are_one_line_errors(tmp_path, rows, message):
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(TalkError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_worker_processes_only_for_enough_video():
    rows = [{"duration": 30.0}] * 3
    assert cropping.pool_size(rows, 0) == 1  # 90 s: starting processes would cost more than it saves
    assert cropping.pool_size(rows * 2, 0) == min(6, os.cpu_count())
    assert cropping.pool_size(rows, 8) == 3 and cropping.pool_size([{"duration": ""}], 0) == 1


def test_cli_runs_the_stage_and_reports_bad_input_in_one_line(tmp_path, runner, root, monkeypatch):
    frames, _ = moving_face(25)
    video = write_video(tmp_path / "v.mp4", frames, audio_seconds=1.0)
    pd.DataFrame([row("v", video)]).to_csv(tmp_path / "m.csv", index=False)
    monkeypatch.chdir(root)
    sets = ["--set", f"paths.manifest={tmp_path / 'm.csv'}", "--set", f"paths.crops={tmp_path / 'o'}"]
    result = runner.invoke(app, ["crop-align", *sets, "--set", "crop_align.min_frames=10"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "v" / "frames.mp4").is_file()
    missing = runner.invoke(app, ["crop-align", "--set", f"paths.manifest={tmp_path / 'nope.csv'}"])
    assert missing.exit_code == 2 and "manifest not found" in missing.output and "Traceback" not in missing.output
    bad = runner.invoke(app, ["crop-align", *sets, "--shard", "x"])
    assert bad.exit_code == 2 and "--shard expects i/n" in bad.output
