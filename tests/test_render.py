"""`talk render` / TalkPipeline end to end on untrained stand-in artefacts in the real formats."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from render_fixture import Sizes, make_artifacts, portrait, speech  # noqa: E402

from talk.cli.main import app  # noqa: E402
from talk.core.errors import TalkError  # noqa: E402
from talk.inference import emotion, pipeline, schedules  # noqa: E402
from talk.inference import frames as render_io  # noqa: E402
from talk.media import io as media  # noqa: E402
from talk.models.emotions import EMOTIONS  # noqa: E402
from talk.stages import render as R  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UNCROPPED = ROOT / "data" / "sources" / "portraits" / "edtalk__uncrop_face.jpg"  # 840 x 1024, one face


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    torch.set_num_threads(1)
    return make_artifacts(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def pipe(arts, tmp_path_factory):
    return pipeline.TalkPipeline.from_pretrained(arts["vae"].parent, whisper=str(arts["whisper"]),
                                          cache_dir=tmp_path_factory.mktemp("cache"), steps=2)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    import cv2

    cv2.imwrite(str(d / "face.png"), cv2.cvtColor(portrait(64), cv2.COLOR_RGB2BGR))
    media.write_wav(d / "speech.wav", speech(1.3))
    return d


def write_params(path: Path, arts: dict, paths: dict | None = None, **render) -> Path:
    data = {
        "render": {"sampling": {"steps": 2}, **render},
        "paths": {"vae": str(arts["vae"]), "prior": str(arts["prior"]), "finetune_disc": str(arts["denoiser"]),
                  "cache": str(path.parent / "cache"), **(paths or {})},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


# --------------------------------------------------------------------------------------------
# End to end


def test_cli_writes_mp4_with_audio_and_right_frame_count(runner, arts, inputs, tmp_path):
    params = write_params(tmp_path / "p.yaml", arts)
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["render", "--image", str(inputs / "face.png"), "--audio", str(inputs / "speech.wav"),
                                 "--emotion", "happy", "--intensity", "0.5", "--no-crop", "--out", str(out),
                                 "--params", str(params)])
    assert result.exit_code == 0, result.output
    info = media.probe(out)
    assert info.has_video and info.has_audio
    assert info.fps == pytest.approx(25.0)
    n = len(media.read_video(out))
    assert n == 33  # 1.3 s = 32.5 frames -> the nearest whole frame, halves up
    assert abs(info.duration - n / 25) < 0.05
    audio = media.read_audio(out)
    assert abs(len(audio) / 16000 - n / 25) < 0.05  # AAC padding aside, the audio lasts as long as the video
    assert not list(tmp_path.glob(".out.mp4*"))  # no temporary left behind


def test_frames_shape_and_determinism(pipe):
    img, audio = portrait(48), speech(0.9)
    a = pipe(img, audio, emotion="sad", crop=False, show_progress=False)
    b = pipe(img, audio, emotion="sad", crop=False, show_progress=False)
    assert a.shape == (render_io.frame_count(len(audio)), pipe.image_size, pipe.image_size, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    c = pipe(img, audio, emotion="sad", crop=False, show_progress=False, seed=1)
    assert not np.array_equal(a, c)


def test_long_audio_windows_cover_every_frame_once(pipe):
    """Several windows with overlap: every frame yielded once, in order, none left over."""
    n = 61
    ref = torch.zeros(pipe.spec.latent_channels, pipe.spec.latent_size, pipe.spec.latent_size)
    feats = torch.randn(2 * n, pipe.spec.audio_layers, pipe.spec.audio_dim)
    z = pipe.emotion("happy")
    cfg = pipe.settings.replace(schedule="window", window=10, overlap=3, steps=1)
    starts, total = [], 0
    for s, lat in pipe.generate_latents(ref, feats, n, z, None, cfg):
        assert s == total
        starts.append(s)
        total += len(lat)
    assert total == n and len(starts) > 1
    windows = schedules.plan_windows(n, 10, 3)
    assert windows[0][0] == 0 and windows[-1][1] == n
    assert all(b[0] <= a[1] - 3 for a, b in zip(windows, windows[1:]))


def test_rolling_schedule_renders_every_frame_deterministically(pipe):
    img, audio = portrait(48), speech(0.7)
    a = pipe(img, audio, emotion="fear", crop=False, show_progress=False, schedule="rolling", steps=3)
    b = pipe(img, audio, emotion="fear", crop=False, show_progress=False, schedule="rolling", steps=3)
    assert a.shape[0] == render_io.frame_count(len(audio))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TalkError, match="Euler"):
        pipe(img, audio, crop=False, show_progress=False, schedule="rolling", sampler="heun")


@pytest.mark.parametrize("schedule", ["window", "rolling"])
def test_guidance_interval(pipe, schedule):
    cfg = pipe.settings.replace(steps=6, guidance_from=0.25, guidance_to=0.75)
    assert cfg.sampling.guided_steps() == {1, 2, 3}  # step centres 0.25, 0.42, 0.58 lie in [0.25, 0.75)
    img, audio = portrait(48), speech(0.4)
    kw = dict(crop=False, show_progress=False, schedule=schedule, steps=2)
    unguided = pipe(img, audio, emotion="happy", guidance_ref=1, guidance_audio=1, guidance_emotion=1, **kw)
    empty = pipe(img, audio, emotion="happy", guidance_from=0.5, guidance_to=0.5, guidance_emotion=4, **kw)
    np.testing.assert_array_equal(empty, unguided)  # no guided step: the single all-conditions branch
    guided = pipe(img, audio, emotion="happy", guidance_emotion=4, **kw)
    assert not np.array_equal(guided, unguided)


# --------------------------------------------------------------------------------------------
# Emotion conditioning


def test_intensity_zero_is_neutral_conditioning(pipe):
    neutral = pipe.emotion("neutral")
    for emo in EMOTIONS:
        torch.testing.assert_close(pipe.emotion(emo, intensity=0.0), neutral, rtol=0, atol=0)
    assert not torch.equal(pipe.emotion("happy", intensity=1.0), neutral)
    img, audio = portrait(48), speech(0.5)
    a = pipe(img, audio, emotion="happy", intensity=0.0, crop=False, show_progress=False)
    b = pipe(img, audio, emotion="neutral", crop=False, show_progress=False)
    np.testing.assert_array_equal(a, b)


def test_intensity_walks_the_level_presets(pipe):
    presets = pipe.prior.presets
    lv = {k: presets[f"emotion/happy/{k}"][0] for k in (1, 2, 3)}
    torch.testing.assert_close(pipe.emotion("happy", 1 / 3), lv[1])
    torch.testing.assert_close(pipe.emotion("happy", 1.0), lv[3])
    torch.testing.assert_close(pipe.emotion("happy", 0.5), (lv[1] + lv[2]) / 2)
    torch.testing.assert_close(pipe.emotion("happy", 1.0, level=2), lv[2])  # a pinned level sits at 1


def test_blend_parsing_and_mixture(pipe):
    assert emotion.parse_blend("happy:0.6,surprised:0.4") == [("happy", 0.6), ("surprised", 0.4)]
    assert emotion.parse_blend("Happy:3, sad:1") == [("happy", 0.75), ("sad", 0.25)]  # normalised above 1
    assert emotion.parse_blend("angry") == [("angry", 1.0)]
    for bad, msg in (("grumpy:1", "unknown emotion 'grumpy'"), ("happy:x", "not a number"),
                     ("happy:-1", "non-negative"), ("", "expected emotion:weight"), ("happy:0", "sum to 0")):
        with pytest.raises(TalkError, match=msg):
            emotion.parse_blend(bad)
    p = pipe.prior.presets
    z = pipe.emotion(blend="happy:0.6,surprised:0.4")
    expected = 0.6 * p["emotion/happy/3"][0] + 0.4 * p["emotion/surprised/3"][0]  # intensity 1 -> level 3
    torch.testing.assert_close(z, expected)
    half = pipe.emotion(blend="happy:0.5")  # the rest is neutral
    torch.testing.assert_close(half, 0.5 * p["emotion/happy/3"][0] + 0.5 * p["emotion/neutral"][0])


def test_emotion_from_npz(pipe, tmp_path):
    mu = np.linspace(-1, 1, pipe.spec.emotion_dim).astype(np.float32)
    np.savez(tmp_path / "emo.npz", mu=mu, logvar=np.zeros_like(mu))
    z = pipe.emotion(emotion_from=tmp_path / "emo.npz")
    np.testing.assert_allclose(z.numpy(), mu, atol=1e-6)
    z0 = pipe.emotion(emotion_from=tmp_path / "emo.npz", intensity=0.0)
    torch.testing.assert_close(z0, pipe.emotion("neutral"))


def test_emotion_from_audio_clip_through_the_embedder(pipe, inputs):
    from talk.inference.embed import embed_clip

    wav = inputs / "speech.wav"
    direct = embed_clip(wav, pipe.prior, pipe.whisper, pipe.chunking)["mu"]
    z = pipe.emotion(emotion_from=wav)
    np.testing.assert_allclose(z.numpy(), direct, rtol=1e-5, atol=1e-6)
    frames = pipe(portrait(48), speech(0.3), emotion_from=wav, crop=False, show_progress=False)
    assert frames.shape[0] == 8


# --------------------------------------------------------------------------------------------
# Guidance


def test_batched_guidance_equals_separate_forwards(pipe):
    from talk.models.sampling import guidance_branches

    spec = pipe.spec
    scales = {"ref": 1.5, "audio": 2.5, "emotion": 4.0}
    guided = pipe.guided(scales, style=False)
    assert len(guided.branches) == 4  # nothing / ref / ref+audio / ref+audio+emotion
    g = torch.Generator().manual_seed(0)
    b, f, c, s = 2, 3, spec.latent_channels, spec.latent_size
    x = torch.randn(b, f, c, s, s, generator=g) * 5
    sigma = torch.full((b,), 5.0)
    cond = {"ref": torch.randn(b, c, s, s, generator=g), "motion": torch.randn(b, spec.motion_frames, c, s, s, generator=g),
            "audio": torch.randn(b, f, spec.audio_window, spec.audio_layers, spec.audio_dim, generator=g),
            "emotion": torch.randn(b, spec.emotion_dim, generator=g), "style": None}
    with torch.no_grad():
        batched = guided(x, sigma, **cond)
        separate = 0
        for keep, w in guidance_branches(scales, ("ref", "audio", "emotion")):
            masks = {k: torch.full((b,), v) for k, v in keep.items()}
            separate = separate + w * pipe.karras(x, sigma, keep=masks, **cond)
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-4)
    # the rolling schedule's mixed batch: guided rows (every branch) and unguided rows, one forward
    with torch.no_grad():
        mixed = guided(x, sigma, guided=[True, False], **cond)
    torch.testing.assert_close(mixed[0], separate[0], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        plain = pipe.karras(x, sigma, **cond)
    torch.testing.assert_close(mixed[1], plain[1], rtol=1e-4, atol=1e-4)
    assert len(pipe.guided({"ref": 1.0, "audio": 3.0, "emotion": 3.0}, style=False).branches) == 2  # ref / all


# --------------------------------------------------------------------------------------------
# Geometry


def test_paste_back_keeps_picture_size_and_outside_pixels():
    picture = np.full((70, 90, 3), 40, np.uint8)
    crop = np.full((32, 32, 3), 200, np.uint8)
    M = np.array([[0.5, 0, -10], [0, 0.5, -5]], np.float32)  # picture px -> crop px: face box at x 20..84, y 10..74
    out = render_io.paste_frame(crop, picture, M, render_io.feather_mask(32, 0.1))
    assert out.shape == picture.shape
    assert out[42, 52].tolist() == [200, 200, 200]  # centre of the face
    assert out[2, 2].tolist() == [40, 40, 40]  # outside the crop
    assert 40 < out[11, 52, 0] < 200  # feathered edge


@pytest.mark.skipif(not UNCROPPED.is_file(), reason="data/sources portraits not present")
def test_crop_and_paste_back_real_portrait(pipe):
    picture = render_io.load_image(UNCROPPED)
    frames = pipe(UNCROPPED, speech(0.3), emotion="happy", paste_back=True, show_progress=False)
    assert frames.shape[1:] == picture.shape
    # far from the face the picture is untouched
    np.testing.assert_array_equal(frames[0, -5:, :5], picture[-5:, :5])


# --------------------------------------------------------------------------------------------
# Errors: one line, exit 2


def test_errors_are_one_line_exit_2(runner, arts, inputs, tmp_path):
    params = write_params(tmp_path / "p.yaml", arts)
    face, wav = str(inputs / "face.png"), str(inputs / "speech.wav")
    base = ["render", "--params", str(params), "--out", str(tmp_path / "o.mp4")]

    line = one_line_error(runner.invoke(app, [*base, "--image", face, "--audio", wav, "--emotion", "grumpy"]))
    assert "unknown emotion 'grumpy'" in line and all(e in line for e in EMOTIONS)

    line = one_line_error(runner.invoke(app, [*base, "--image", face, "--audio", wav, "--emotion", "happy"]))
    assert "no face" in line  # a gradient picture with cropping on

    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    line = one_line_error(runner.invoke(app, [*base, "--image", face, "--audio", str(bad), "--no-crop"]))
    assert "noise.wav" in line

    missing = write_params(tmp_path / "m.yaml", {**arts, "prior": tmp_path / "nowhere"})
    line = one_line_error(runner.invoke(app, ["render", "--params", str(missing), "--image", face, "--audio", wav,
                                              "--no-crop", "--out", str(tmp_path / "o.mp4")]))
    assert "nowhere" in line and "pretrain-prior" in line and "dvc repro pretrain_prior" in line

    line = one_line_error(runner.invoke(app, [*base, "--image", face, "--audio", wav, "--sampler", "magic"]))
    assert "sampler" in line
    assert not (tmp_path / "o.mp4").exists()


# --------------------------------------------------------------------------------------------
# Batch and the stage


def test_batch_csv(runner, arts, inputs, tmp_path):
    params = write_params(tmp_path / "p.yaml", arts, crop=False)
    media.write_wav(tmp_path / "short.wav", speech(0.6))
    (tmp_path / "jobs.csv").write_text(
        "image,audio,emotion,intensity,out,blend,seed\n"
        f"{inputs / 'face.png'},{inputs / 'speech.wav'},happy,0.5,a.mp4,,\n"
        f"{inputs / 'face.png'},short.wav,,1.0,b.mp4,angry:0.5,3\n"
    )
    result = runner.invoke(app, ["render", "--batch", str(tmp_path / "jobs.csv"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert len(media.read_video(tmp_path / "a.mp4")) == 33
    assert len(media.read_video(tmp_path / "b.mp4")) == 15

    (tmp_path / "bad.csv").write_text("image,audio,out\nx.png,y.wav,z.mp4\n")
    line = one_line_error(runner.invoke(app, ["render", "--batch", str(tmp_path / "bad.csv"), "--params", str(params)]))
    assert "missing column" in line and "emotion" in line
    (tmp_path / "bad2.csv").write_text(f"image,audio,emotion,intensity,out\n{inputs / 'face.png'},{inputs / 'speech.wav'},joy,1,c.mp4\n")
    line = one_line_error(runner.invoke(app, ["render", "--batch", str(tmp_path / "bad2.csv"), "--params", str(params)]))
    assert "bad2.csv:2" in line and "unknown emotion 'joy'" in line


def test_stage_renders_demo_set(arts, inputs, tmp_path):
    from talk.core import params as P
    from talk.core import runtime

    path = write_params(tmp_path / "p.yaml", arts, paths={"sources": str(inputs), "render": str(tmp_path / "render")},
                        crop=False, demo_image="face.png", demo_audio="speech.wav", demo_seconds=0.5,
                        emotions=["neutral", "happy", "sad"], sheet_frames=3, sheet_size=32)
    params = P.load(path)
    runtime.setup(params.base)
    summary = R.run(params)
    out = tmp_path / "render"
    for emo in ("neutral", "happy", "sad"):
        assert len(media.read_video(out / f"{emo}.mp4")) == 13  # 0.5 s = 12.5 frames, halves up
        assert media.probe(out / f"{emo}.mp4").has_audio
    import cv2

    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape == (3 * 32, 3 * 32, 3)
    assert summary["frames_per_video"] == 13 and (out / "render.json").is_file() and (out / "params.yaml").is_file()


def test_evaluation_renderer_contract(pipe):
    fn = pipe.evaluation_renderer()
    frames = fn(portrait(pipe.image_size), speech(0.4), "angry", 2)
    assert frames.shape == (10, pipe.image_size, pipe.image_size, 3)
    assert fn(portrait(pipe.image_size), speech(0.4), "", 0).shape[0] == 10  # unlabelled -> neutral


def test_style_presets_and_branch(tmp_path):
    arts = make_artifacts(tmp_path / "a", Sizes(style_tokens=2))
    pipe = pipeline.TalkPipeline.from_pretrained(tmp_path / "a", whisper=str(arts["whisper"]), cache_dir=tmp_path / "c", steps=1)
    assert pipe.has_style
    img, audio = portrait(32), speech(0.3)
    plain = pipe(img, audio, crop=False, show_progress=False)
    styled = pipe(img, audio, crop=False, show_progress=False, style_from="style/M001", guidance_style=2.0)
    assert plain.shape == styled.shape and not np.array_equal(plain, styled)
    assert len(pipe.guided({"ref": 1.0, "audio": 2.0, "emotion": 3.0, "style": 2.0}, style=True).branches) == 4
    wav = tmp_path / "ref.wav"
    media.write_wav(wav, speech(0.8, seed=5))
    s = pipe.style(wav)  # the prior's style head on a reference clip
    assert s.shape == (pipe.spec.style_dim,) and torch.isfinite(s).all()


def test_style_needs_a_style_trained_denoiser(pipe):
    with pytest.raises(TalkError, match="without style conditioning"):
        pipe.style("style/M001")


# --------------------------------------------------------------------------------------------
# Long audio: identity and colour do not drift


class DriftingDenoiser(torch.nn.Module):
    """A stand-in D(x, σ) that copies the last motion frame plus a constant bias: each window is a
    little brighter than the one before, the error accumulation re-anchoring must stop."""

    def forward(self, x, sigma, motion=None, keep=None, **cond):
        return (motion[:, -1:] + 0.2).expand_as(x)


@pytest.mark.parametrize("schedule", ["window", "rolling"])
def test_reanchoring_stops_accumulated_drift(pipe, monkeypatch, schedule):
    monkeypatch.setattr(pipe, "karras", DriftingDenoiser())
    n, spec = 100, pipe.spec
    ref = torch.zeros(spec.latent_channels, spec.latent_size, spec.latent_size)
    feats = torch.zeros(2 * n, spec.audio_layers, spec.audio_dim)
    z = pipe.emotion("neutral")

    def window_means(**kw):
        cfg = pipe.settings.replace(window=10, steps=2, schedule=schedule, **kw)
        lat = torch.cat([x for _, x in pipe.generate_latents(ref, feats, n, z, None, cfg)])
        return lat.view(10, -1).mean(1)  # mean latent of each window

    free = window_means(anchor=0.0, anchor_colour=False)
    assert free[-1] - free[0] > 1.5  # 10 windows x 0.2: the bias accumulates
    held = window_means(anchor=0.0, anchor_colour=True)
    torch.testing.assert_close(held, torch.full_like(held, 0.2))  # every window one bias away from the reference
    blended = window_means(anchor=0.5, anchor_colour=False)
    assert blended[-1] < 0.45  # identity blend alone bounds it too: fixed point 0.2 / 0.5


@pytest.mark.slow
def test_sixty_second_render_does_not_drift(pipe):
    """Mean colour distance and PSNR of the last second vs the reference crop stay within those of
    the first second (re-anchored motion context)."""
    ref = portrait(pipe.image_size)
    frames = pipe(ref, speech(60.0), emotion="happy", crop=False, show_progress=False, steps=2, window=25)
    assert len(frames) == 1500
    recon = pipe.decode(pipe.prepare(ref, crop=False).latent[None])[0].astype(np.float32)  # what the model can reach

    def colour(fr):
        return float(np.abs(fr.astype(np.float32).mean((1, 2)) - recon.mean((0, 1))).mean())

    def psnr(fr):
        mse = ((fr.astype(np.float32) - recon) ** 2).mean((1, 2, 3))
        return float((10 * np.log10(255**2 / np.maximum(mse, 1e-6))).mean())

    first, last = frames[:25], frames[-25:]
    assert colour(last) <= colour(first) + 3.0, (colour(first), colour(last))
    assert psnr(last) >= psnr(first) - 1.0, (psnr(first), psnr(last))


def test_clip_backbone_renders_in_f_frame_windows(tmp_path):
    """SVD-style backbone (UNetSpatioTemporalConditionModel): windows of exactly F frames, last one padded."""
    s = Sizes(backbone="clip", target_frames=4, unet_channels=(32, 64), attention_head_dim=16)
    arts = make_artifacts(tmp_path / "a", s)
    pipe = pipeline.TalkPipeline.from_pretrained(tmp_path / "a", whisper=str(arts["whisper"]), cache_dir=tmp_path / "c", steps=1)
    frames = pipe(portrait(32), speech(0.42), emotion="happy", crop=False, show_progress=False)  # 10.5 -> 11 frames
    assert frames.shape == (11, 32, 32, 3)  # windows 0-3, 4-7, 7-10


# --------------------------------------------------------------------------------------------
# The frames themselves: pinned against the pipeline before the layout split


PINNED = {  # case -> (emotion, settings); frames in tests/fixtures/render_pinned.npz
    "rolling": ("happy", dict(schedule="rolling", steps=3, guidance_ref=1.0, guidance_audio=2.0, guidance_emotion=3.0,
                              guidance_from=0.2, guidance_to=0.8)),
    "window": ("sad", dict(schedule="window", window=4, overlap=1, steps=2, guidance_ref=1.5, guidance_audio=2.0,
                           guidance_emotion=3.0, guidance_from=0.0, guidance_to=1.0)),
    "heun": ("angry", dict(schedule="window", window=6, sampler="heun", steps=3, sigmas="uniform", guidance_ref=1.0,
                           guidance_audio=2.0, guidance_emotion=2.5, guidance_from=0.0, guidance_to=1.0)),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_frames_match_the_pre_split_pipeline(pipe, case):
    """0.4 s renders of the fixture equal the frames the pipeline made before it was split into
    modules (commit 0ad2028, same fixture and settings). A 0.1 change of one guidance scale moves
    frames by ~0.5 grey levels on average; float reassociation by at most one level here and there."""
    want = np.load(Path(__file__).parent / "fixtures" / "render_pinned.npz")[case]
    emo, settings = PINNED[case]
    got = pipe(portrait(32), speech(0.4), emotion=emo, crop=False, show_progress=False, **settings)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert got.shape == want.shape
    assert diff.max() <= 1 and diff.mean() < 0.01, (case, diff.max(), diff.mean())


# --------------------------------------------------------------------------------------------
# Settings: the denoiser's inference.json, render.sampling over it, per-call keys over both


def test_settings_come_from_the_denoisers_inference_json(tmp_path):
    from render_fixture import AUDIO

    from talk.core import params as P
    from talk.inference import settings
    from talk.media.faces import FaceConfig

    arts = make_artifacts(tmp_path / "a")
    trained = settings.SamplingConfig(steps=3, guidance_emotion=4.0, guidance_from=0.0)
    settings.write(arts["denoiser"], trained, {**AUDIO, "whisper": str(arts["whisper"]), "precision": "bfloat16",
                                               "context_s": 4.0}, P.to_plain(FaceConfig(box_expand=0.4)), 32)
    pipe = pipeline.TalkPipeline.from_pretrained(tmp_path / "a", cache_dir=tmp_path / "c")  # Whisper: inference.json's
    assert pipe.settings.sampling == trained
    assert pipe.chunking == {**{k: AUDIO[k] for k in pipe.chunking}, "precision": "bfloat16", "context_s": 4.0}
    assert pipe.aligner.cfg.box_expand == 0.4
    # render.sampling overrides single keys (the CLI's --steps / --guidance-* land there), the rest stays the model's
    params = P.load(write_params(tmp_path / "p.yaml", arts, sampling={"guidance_emotion": 3.0}), ["render.sampling.steps=4"])
    pipe = pipeline.TalkPipeline.from_params(params)
    assert pipe.settings.sampling == settings.SamplingConfig(steps=4, guidance_emotion=3.0, guidance_from=0.0)
    assert pipe.settings.replace(steps=6, window=7).sampling.steps == 6  # per call, over both
    assert pipe.settings.replace(window=7).loop.window == 7
    with pytest.raises(TalkError, match="sampler"):
        pipe.settings.replace(sampler="magic")
    with pytest.raises(TypeError, match="unknown render setting"):
        pipe.settings.replace(stepz=3)
    with pytest.raises(TalkError, match="unknown key 'guidance_emo'"):
        P.load(write_params(tmp_path / "q.yaml", arts, sampling={"guidance_emo": 3.0}))
    (arts["denoiser"] / settings.FILE).unlink()
    with pytest.raises(TalkError, match=r"inference.json not found.*`talk finetune-disc`"):
        pipeline.TalkPipeline.from_params(params)


def test_render_denoiser_picks_the_paths_entry(arts, tmp_path):
    from talk.core import params as P

    params = P.load(write_params(tmp_path / "p.yaml", arts, paths={"diffusion": str(tmp_path / "no-diffusion")},
                                 denoiser="diffusion"))
    with pytest.raises(TalkError, match="no-diffusion; run `talk train-diffusion` or `dvc repro train_diffusion`$"):
        pipeline.TalkPipeline.from_params(params)
    with pytest.raises(TalkError, match="not one of"):
        P.load(write_params(tmp_path / "q.yaml", arts, denoiser="artifacts/diffusion"))


def test_render_config_defaults_are_params_yaml():
    from talk.core import params as P

    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["render"]
    assert P.to_plain(R.Config()) == shipped


def test_top_level_import_is_lazy():
    import talk

    assert talk.TalkPipeline is pipeline.TalkPipeline
