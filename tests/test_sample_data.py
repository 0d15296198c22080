"""`talk sample-data`: the real stage on a tiny config, and the expression / prosody building blocks."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from talk.cli.main import app
from talk.media import io as media
from talk.media import landmarks as L
from talk.models.emotions import EMOTIONS
from talk.synthesis import clips as S
from talk.synthesis import expressions as E
from talk.synthesis import prosody
from talk.synthesis import rig as R

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "data" / "sources"
TINY = [  # 3 identities (M012: one of the people added from the samples' identities/) x 2 emotions x 1 level x 1 utterance of 1 s
    "sample_data.identities=[W002, M001, M012]",
    "sample_data.emotions=[neutral, happy]",
    "sample_data.levels=[3]",
    "sample_data.utterances=1",
    "sample_data.seconds=1.0",
    "sample_data.size=256",  # dlib needs ~60 px between the eyes to measure the lips well
]


def _run(runner, out: Path, *extra: str):
    args = ["sample-data"]
    for s in (*TINY, f"paths.raw={out}", *extra):
        args += ["--set", s]
    return runner.invoke(app, args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The stage run once on the tiny config (2 worker processes)."""
    import os

    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("sample")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = _run(CliRunner(), out, "sample_data.workers=2")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def rig() -> R.FaceRig:
    rgb = cv2.cvtColor(cv2.imread(str(SOURCES / "portraits" / "eamm__scarlett.jpg")), cv2.COLOR_BGR2RGB)
    return R.rig_from_image(rgb, R.RigSpec(size=192))


# -- the stage ---------------------------------------------------------------------------------


def test_mead_layout_and_outputs(tiny):
    mead = tiny / "mead"
    clips = sorted(p.relative_to(mead).as_posix() for p in mead.rglob("*.mp4"))
    assert clips == [
        "M001/video/front/happy/level_3/001.mp4",
        "M001/video/front/neutral/level_1/001.mp4",  # neutral lives in level_1, as in MEAD
        "M012/video/front/happy/level_3/001.mp4",
        "M012/video/front/neutral/level_1/001.mp4",
        "W002/video/front/happy/level_3/001.mp4",
        "W002/video/front/neutral/level_1/001.mp4",
    ]
    for rel in clips:
        assert (mead / rel).with_suffix(".gt.csv").is_file()
    assert (mead / "params.yaml").is_file() and "sample_data:" in (mead / "params.yaml").read_text()
    index = pd.read_csv(mead / "index.csv")
    assert sorted(index["path"]) == clips and (index["frames"] == 25).all()
    with open(mead / "SOURCES.tsv", newline="") as f:
        kinds = {r["kind"] for r in csv.DictReader(f, delimiter="\t")}
    assert kinds == {"portrait", "speech"}
    assert (mead / "dropped.tsv").read_text() == "file\tspeaker\treason\n"  # all three pass the face check
    # the in-the-wild subset: flat videos, a same-stem wav beside those without audio
    wild = tiny / "wild"
    videos = sorted(wild.glob("*.mp4"))
    assert len(videos) == 17 and not [p for p in wild.iterdir() if p.is_dir()]
    for v in videos:
        info = media.probe(v)
        assert info.has_audio or v.with_suffix(".wav").is_file(), v.name
        assert info.duration <= 10.1, v.name  # trimmed to 10 s at most
    # Obama is a portrait (M004) and the person of 4 wild videos: labels.csv names him there
    labels = pd.read_csv(wild / "labels.csv")
    assert set(labels["speaker"]) == {"M004"} and len(labels) == 4 and all((wild / p).is_file() for p in labels["path"])
    # nothing temporary left behind
    assert not [p for p in tiny.iterdir() if p.name.startswith(".")]


def test_clip_decodes_with_audio_and_gt_matches(tiny):
    video = tiny / "mead" / "W002/video/front/happy/level_3/001.mp4"
    info = media.probe(video)
    assert info.has_video and info.has_audio
    assert (info.width, info.height) == (256, 256) and info.fps == pytest.approx(25)
    frames = media.read_video(video)
    audio = media.read_audio(video)
    assert len(frames) == 25
    assert abs(len(audio) / media.AUDIO_RATE - 1.0) < 0.05 and np.abs(audio).max() > 0.05  # real speech, ~1 s
    gt = pd.read_csv(video.with_suffix(".gt.csv"))
    assert list(gt.columns) == S.gt_columns()
    assert len(gt) == len(frames) and (gt["frame"] == np.arange(25)).all()
    assert set(gt["emotion"]) == {"happy"} and set(gt["level"]) == {3} and set(gt["speaker"]) == {"W002"}
    xy = np.stack([gt[[f"x{i}" for i in range(68)]].to_numpy(), gt[[f"y{i}" for i in range(68)]].to_numpy()], -1)
    assert xy.min() >= 0 and xy.max() < 256
    assert np.allclose(E.mouth_open(xy), gt["mouth_open"], atol=2e-3)  # the column is the landmarks' gap
    assert gt["mouth_open"].max() - gt["mouth_open"].min() > 0.1  # the mouth moves with the speech


def test_mouth_openness_is_measurable(tiny):
    """dlib re-measures the ground-truth openness on the rendered frames (lip-sync ground truth)."""
    lm = R.landmarker()
    gts, measured = [], []
    for video in sorted((tiny / "mead").rglob("*.mp4")):
        gt = pd.read_csv(video.with_suffix(".gt.csv"))["mouth_open"].to_numpy()
        m = []
        for frame in media.read_video(video):
            faces = lm.detect(frame)
            assert len(faces) == 1
            m.append(E.mouth_open(faces[0]))
        assert np.corrcoef(gt, m)[0, 1] >= 0.8, video
        gts.extend(gt)
        measured.extend(m)
    r = np.corrcoef(gts, measured)[0, 1]
    assert r >= 0.8, r


def test_deterministic_for_a_seed_whatever_the_workers(tiny, tmp_path, runner, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = _run(runner, tmp_path, "sample_data.workers=1")
    assert result.exit_code == 0, result.output
    for name in ("index.csv", "dropped.tsv"):
        assert (tmp_path / "mead" / name).read_bytes() == (tiny / "mead" / name).read_bytes()
    for video in sorted((tiny / "mead").rglob("*.mp4")):
        assert (tmp_path / "mead" / video.relative_to(tiny / "mead")).read_bytes() == video.read_bytes()  # bitwise
        rel = video.relative_to(tiny / "mead")
        again = tmp_path / "mead" / rel
        assert again.with_suffix(".gt.csv").read_text() == video.with_suffix(".gt.csv").read_text()
        assert np.array_equal(media.read_video(again), media.read_video(video))
        assert np.array_equal(media.read_audio(again), media.read_audio(video))
    # another seed gives other clips
    other = tmp_path / "seed1"
    result = _run(runner, other, "sample_data.workers=1", "base.seed=1", "sample_data.wild=false")
    assert result.exit_code == 0, result.output
    rel = "W002/video/front/happy/level_3/001.gt.csv"
    assert (other / "mead" / rel).read_text() != (tiny / "mead" / rel).read_text()
    assert not (other / "wild").exists()


def test_unknown_identity_is_one_line_exit_2_and_no_output(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = _run(runner, tmp_path, "sample_data.identities=[X999]")
    assert result.exit_code == 2
    assert "no portrait for X999" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "mead").exists() and not list(tmp_path.iterdir())


def test_missing_sources_manifest_is_a_user_error(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = _run(runner, tmp_path / "out", f"paths.sources={tmp_path / 'nothing'}")
    assert result.exit_code == 2 and "MANIFEST.tsv not found" in result.output
    assert not (tmp_path / "out").exists()


def _sources_with_a_wall(tmp_path: Path) -> Path:
    """Sources of two portraits: a grey wall (X001, no face) and a real one (X002)."""
    src = tmp_path / "sources"
    (src / "portraits").mkdir(parents=True)
    cv2.imwrite(str(src / "portraits" / "wall.png"), np.full((200, 200, 3), 128, np.uint8))
    (src / "portraits" / "face.jpg").write_bytes((SOURCES / "portraits" / "eamm__scarlett.jpg").read_bytes())
    (src / "speech").mkdir()
    media.write_wav(src / "speech" / "a.wav", 0.3 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32))
    rows = ["file\tkind\tspeaker\tgender\temotion", "portraits/wall.png\tportrait\tX001\t\t",
            "portraits/face.jpg\tportrait\tX002\tF\t", "speech/a.wav\tspeech\t\t\t"]
    (src / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    return src


def test_portrait_without_a_face_is_dropped_with_its_reason(tmp_path, runner):
    src = _sources_with_a_wall(tmp_path)
    out = tmp_path / "out"
    result = _run(runner, out, f"paths.sources={src}", "sample_data.identities=[]", "sample_data.wild=false",
                  "sample_data.emotions=[neutral]", "sample_data.workers=2")
    assert result.exit_code == 0, result.output
    assert "wall.png (X001) dropped: no face found" in result.output  # said in the stage log
    dropped = pd.read_csv(out / "mead" / "dropped.tsv", sep="\t")
    assert dropped.to_dict("records") == [{"file": "wall.png", "speaker": "X001", "reason": "no face found"}]
    assert sorted(p.relative_to(out / "mead").as_posix() for p in (out / "mead").rglob("*.mp4")) == [
        "X002/video/front/neutral/level_1/001.mp4"]


def test_no_usable_portrait_is_one_line_exit_2_and_no_output(tmp_path, runner):
    src = _sources_with_a_wall(tmp_path)
    out = tmp_path / "out"
    result = _run(runner, out, f"paths.sources={src}", "sample_data.identities=[X001]", "sample_data.workers=2")
    assert result.exit_code == 2, result.output
    assert "no usable portrait left" in result.output and "Traceback" not in result.output
    assert not out.exists() or not list(out.iterdir())


def test_face_check_reasons(rig):
    spec = R.RigSpec(size=192)
    face = rig.canvas  # one aligned face, IOD 48 px
    assert R.portrait_problem(face, spec, min_iod=40, max_mouth_open=0.12) == ""
    two = np.concatenate([face, face], axis=1)
    assert R.portrait_problem(two, spec, 40, 0.12).startswith("2 faces found")
    small = cv2.resize(face, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    assert R.portrait_problem(small, spec, 40, 0.12).startswith("face too small: 24 px between the eyes")
    opened = rig.render(rig.pose(E.mouth_offsets(rig.neutral, 0.3)))
    assert R.portrait_problem(opened, spec, 40, 0.12).startswith("mouth open")


def test_plan_rotates_levels_over_identities_and_keeps_every_emotion():
    from talk.synthesis.sources import read_sources

    sources = read_sources(SOURCES)
    cfg = S.SampleConfig()  # the defaults: every portrait, one level per (speaker, emotion), one utterance
    jobs = S.plan(cfg, sources, 0)
    speakers = {j.speaker for j in jobs}
    assert len(speakers) >= 24
    for sp in speakers:  # every speaker has every emotion, once
        assert sorted(j.emotion for j in jobs if j.speaker == sp) == sorted(EMOTIONS), sp
    cells = {(j.emotion, j.level) for j in jobs}
    assert all((e, k) in cells for e in EMOTIONS if e != "neutral" for k in (1, 2, 3))  # every level is somewhere
    assert len(jobs) == 8 * len(speakers)
    # a dropped speaker leaves the others' clips as they were
    fewer = S.plan(cfg, sources, 0, dropped={"M001"})
    assert {j.key for j in fewer} == {j.key for j in jobs if j.speaker != "M001"}
    # levels_per_identity=0: every level for everyone (the MEAD grid)
    full = S.plan(S.SampleConfig(identities=("W002",), levels_per_identity=0, utterances=2), sources, 0)
    assert len(full) == 7 * 3 * 2 + 6


def test_bad_config_values_are_rejected(runner, monkeypatch):
    monkeypatch.chdir(ROOT)
    for bad, message in (("sample_data.size=161", "must be even"), ("sample_data.emotions=[joy]", "sample_data.emotions"),
                         ("sample_data.levels=[4]", "above the maximum")):
        result = runner.invoke(app, ["sample-data", "--set", bad, "--dry-run"])
        assert result.exit_code == 2 and message in result.output, (bad, result.output)


def test_sources_are_attributed():
    with open(SOURCES / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    listed = {r["file"] for r in rows}
    carried = {p.relative_to(SOURCES).as_posix() for p in SOURCES.rglob("*") if p.is_file()} - {"MANIFEST.tsv", "build.py", "README.md"}
    assert listed == carried
    for r in rows:
        assert r["origin_repo"] and r["licence"] and r["what_it_shows"], r["file"]
    portraits = [r for r in rows if r["kind"] == "portrait"]
    assert len({r["speaker"] for r in portraits}) >= 24
    # held out: >= 5 people of their own, in heldout/ only, read by no stage (kind heldout_portrait)
    heldout = [r for r in rows if r["kind"] == "heldout_portrait"]
    assert len({r["speaker"] for r in heldout}) >= 5 and all(r["file"].startswith("heldout/") for r in heldout)
    assert not {r["speaker"] for r in heldout} & {r["speaker"] for r in rows if r["kind"] != "heldout_portrait"}
    assert len([r for r in rows if r["kind"] == "speech"]) >= 6
    assert len([r for r in rows if r["kind"] == "wild_video"]) >= 17
    assert sum(p.stat().st_size for p in SOURCES.rglob("*") if p.is_file()) < 12e6


# -- expressions -------------------------------------------------------------------------------


def test_happy_raises_and_widens_the_mouth_corners(rig):
    p = rig.neutral
    d = E.emotion_offsets(p, "happy", 1.0)
    assert d[48, 1] < -0.1 * rig.unit and d[54, 1] < -0.1 * rig.unit  # up (y grows downwards)
    assert d[48, 0] < 0 < d[54, 0]  # outwards on both sides
    sad = E.emotion_offsets(p, "sad", 1.0)
    assert sad[48, 1] > 0 and sad[54, 1] > 0 and sad[21, 1] < 0  # corners down, inner brows up
    assert np.abs(E.emotion_offsets(p, "neutral", 1.0)).max() == 0
    assert np.allclose(E.emotion_offsets(p, "fear", 0.5), 0.5 * E.emotion_offsets(p, "fear", 1.0))


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_emotions_keep_the_inner_lip_gap(rig, emotion):
    p = rig.neutral
    for gap in (0.0, 0.3):
        base = p + E.mouth_offsets(p, gap)
        moved = base + E.emotion_offsets(p, emotion, 1.0)
        assert E.mouth_open(moved) * L.interocular(moved) == pytest.approx(E.mouth_open(base) * L.interocular(base), abs=1e-3)


def test_opening_adds_the_requested_gap(rig):
    p = rig.neutral
    for gap in (0.1, 0.25, 0.4):
        assert E.mouth_open(p + E.mouth_offsets(p, gap)) == pytest.approx(E.mouth_open(p) + gap, abs=0.02)


def test_no_triangle_folds_over_emotions_openings_and_blinks(rig):
    p = rig.neutral
    for emotion in EMOTIONS:
        for gap in (0.0, 0.2, 0.4):
            d = E.emotion_offsets(p, emotion, 1.0) + E.mouth_offsets(p, gap)
            d += E.blink_offsets(p + d, 1.0)
            head = E.similarity(3.0, 1.03, (2.0, -2.0), p.mean(0))
            assert rig.folded(rig.pose(d, head)) == 0, (emotion, gap)


def test_open_mouth_shows_a_dark_cavity_with_teeth(rig):
    p = rig.neutral
    closed = rig.render(rig.pose(np.zeros((68, 2), np.float32))).astype(np.float32)
    verts = rig.pose(E.mouth_offsets(p, 0.35))
    opened = rig.render(verts).astype(np.float32)
    lips = verts[list(R.INNER_LIPS)]
    mask = np.zeros(opened.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(lips).astype(np.int32)], 1)
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0
    inside = opened[mask].mean(1)  # grey level of the mouth interior pixels
    assert mask.sum() > 50
    assert np.median(inside) < 0.5 * closed[mask].mean()  # dark, not stretched lips
    assert np.percentile(inside, 95) > 120  # some bright teeth
    # the frame is otherwise the portrait (eyes region unchanged)
    eyes = slice(int(p[37, 1]) - 5, int(p[41, 1]) + 5), slice(int(p[36, 0]), int(p[45, 0]))
    assert np.abs(opened[eyes] - closed[eyes]).mean() < 2.0


def test_blink_closes_the_lids(rig):
    p = rig.neutral
    d = E.blink_offsets(p, 1.0)
    shut = p + d
    for up, low in L.LID_PAIRS:
        assert np.linalg.norm(shut[up] - shut[low]) < 0.05
    assert np.abs(d[:36]).max() == 0 and np.abs(d[48:]).max() == 0


def test_blink_and_head_tracks_are_seeded():
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    a, b = S.blink_track(r1, 250, 25, 0.5), S.blink_track(r2, 250, 25, 0.5)
    assert np.array_equal(a, b) and a.max() == 1.0 and (a > 0).mean() < 0.3
    assert np.abs(S._smooth_noise(np.random.default_rng(0), 100, 25)).max() <= 1.0


# -- prosody -----------------------------------------------------------------------------------


def _tone(f0: float, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)).astype(np.float32) * 0.3


def _f0(x: np.ndarray, rate: int = 16000) -> float:
    seg = x[len(x) // 4: len(x) // 4 + 2048]
    seg = seg - seg.mean()
    ac = np.correlate(seg, seg, "full")[len(seg) - 1:]
    lo, hi = rate // 500, rate // 60
    return rate / (lo + int(np.argmax(ac[lo:hi])))


def test_time_stretch_keeps_pitch():
    x = _tone(150.0)
    for factor in (0.8, 1.25):
        y = prosody.time_stretch(x, factor)
        assert len(y) == pytest.approx(len(x) * factor, abs=2)
        assert _f0(y) == pytest.approx(150.0, rel=0.03)


def test_prosody_shifts_pitch_and_tempo():
    x = _tone(150.0, 2.0)
    up = prosody.apply(x, 16000, prosody.Prosody(pitch=4.0, tempo=1.0, gain=0.0))
    assert len(up) == pytest.approx(len(x), rel=0.01)
    assert _f0(up) == pytest.approx(150.0 * 2 ** (4 / 12), rel=0.04)
    slow = prosody.apply(x, 16000, prosody.Prosody(pitch=0.0, tempo=0.8, gain=0.0))
    assert len(slow) == pytest.approx(len(x) / 0.8, rel=0.01)
    loud = prosody.apply(x, 16000, prosody.scaled("angry", 1.0))
    quiet = prosody.apply(x, 16000, prosody.scaled("sad", 1.0))
    assert prosody.speech_level(loud, 16000) > 2 * prosody.speech_level(quiet, 16000)
    assert np.abs(loud).max() <= 1.0
    assert prosody.scaled("sad", 1.0).pitch < 0 < prosody.scaled("happy", 1.0).pitch
    assert prosody.scaled("neutral", 1.0) == prosody.Prosody(0.0, 1.0, 0.0)


def test_loudness_envelope_follows_bursts():
    rate, fps = 16000, 25
    x = np.zeros(rate, np.float32)
    x[int(0.2 * rate):int(0.4 * rate)] = _tone(200.0, 0.2)
    env = prosody.loudness_envelope(x, rate, fps, 25)
    assert env.shape == (25,)
    assert env[7] > 0.9 and env[0] == 0 and env[20] == 0
