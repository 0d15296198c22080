"""Stage `discover`: layouts, rejects, the speaker-disjoint split, the CLI (tiny fixture videos)."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from talk.cli.main import app
from talk.core import params as P
from talk.core.errors import TalkError
from talk.data import discovery as D
from talk.data import manifest as M
from talk.media import io as media
from talk.models.emotions import EMOTIONS
from talk.stages import discover as stage

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"  # as in conftest.py
N_FRAMES, SIDE, FPS = 15, 64, 25  # 0.6 s clips: above the default discover.min_duration
TONE = (0.3 * np.sin(2 * np.pi * 440 * np.arange(N_FRAMES * media.AUDIO_RATE // FPS) / media.AUDIO_RATE)).astype(np.float32)


@pytest.fixture(scope="module")
def media_files(tmp_path_factory):
    """One muxed video, one silent video, a matching wav: copied into every fixture tree."""
    d = tmp_path_factory.mktemp("media")
    frames = np.random.default_rng(0).integers(0, 255, (N_FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    media.write_video(d / "muxed.mp4", frames, fps=FPS, audio=TONE)
    media.write_video(d / "silent.mp4", frames, fps=FPS)
    media.write_video(d / "short.mp4", frames[:5], fps=FPS, audio=TONE[: len(TONE) // 3])
    media.write_wav(d / "tone.wav", TONE)
    media.write_wav(d / "long.wav", np.tile(TONE, 4))
    return d


def _put(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _params(tmp_path, roots, raw=None, **discover):
    cfg = {"roots": [str(r) for r in roots], **discover}
    paths = {"manifest": str(tmp_path / "out" / "manifest.csv"), "rejects": str(tmp_path / "out" / "rejects.csv")}
    if raw is not None:
        paths["raw"] = str(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"paths": paths, "discover": cfg}))
    return path


def _run(tmp_path, roots, raw=None, **discover):
    params = P.load(_params(tmp_path, roots, raw, **discover))
    stage.run(params)
    manifest = pd.read_csv(params.paths.manifest, keep_default_na=False)
    rejects = pd.read_csv(params.paths.rejects, keep_default_na=False)
    return manifest, rejects


def _mead_tree(root, m, speakers=("M003", "M005", "W009", "W011", "W020")):
    """Two clips per speaker; the first has a ground-truth table beside it."""
    for s in speakers:
        for emotion, level in (("angry", 3), ("neutral", 1)):
            video = _put(m / "muxed.mp4", root / s / "video" / "front" / emotion / f"level_{level}" / "001.mp4")
            if emotion == "angry":
                video.with_name("001.gt.csv").write_text("frame,gap\n0,0.1\n")
    _put(m / "muxed.mp4", root / "M005" / "video" / "left_30" / "happy" / "level_2" / "001.mp4")  # other view
    return root


def test_mead_layout_labels_levels_speakers_gt(tmp_path, media_files):
    root = _mead_tree(tmp_path / "mead", media_files)
    manifest, rejects = _run(tmp_path, [root])
    assert list(manifest.columns) == list(M.COLUMNS)
    assert len(manifest) == 10 and len(rejects) == 0  # the left_30 view is not asked for
    row = manifest.set_index("clip_id").loc["M005_angry_3_001"]
    assert (row.speaker, row.emotion, row.level, row.subset) == ("M005", "angry", 3, "mead")
    assert row.gt_path.endswith("M005/video/front/angry/level_3/001.gt.csv")
    assert row.audio_path == row.video_path and bool(row.has_audio)
    assert (row.width, row.height, row.fps) == (SIDE, SIDE, FPS)
    assert row.duration == pytest.approx(N_FRAMES / FPS, abs=0.05)
    neutral = manifest.set_index("clip_id").loc["M005_neutral_1_001"]
    assert neutral.gt_path == "" and neutral.level == 1
    assert set(manifest["speaker"]) == {"M003", "M005", "W009", "W011", "W020"}
    # MEAD's test speakers go to test; every speaker sits in one split only
    assert set(manifest.loc[manifest.speaker.isin(["M003", "W009"]), "split"]) == {"test"}
    assert (manifest.groupby("speaker")["split"].nunique() == 1).all()
    assert (tmp_path / "out" / "manifest.params.yaml").is_file()


def test_roots_are_relative_to_paths_raw_unless_absolute(tmp_path, media_files):
    raw = tmp_path / "raw"
    _mead_tree(raw / "mead", media_files, speakers=("M005", "W011"))
    manifest, rejects = _run(tmp_path, ["mead"], raw=raw)
    assert len(manifest) == 4 and len(rejects) == 0
    assert set(manifest["subset"]) == {"mead"}
    assert all(Path(p).is_relative_to(raw / "mead") for p in manifest["video_path"])
    cfg = D.DiscoverConfig()
    assert cfg.root_paths(Path("/data/raw")) == (Path("/data/raw/mead"), Path("/data/raw/wild"))
    assert D.DiscoverConfig(roots=(Path("/abs/HDTF"), Path("MEAD"))).root_paths(raw) == (Path("/abs/HDTF"), raw / "MEAD")
    with pytest.raises(TalkError, match=r"data root not found: .*raw/wild \(discover.roots\)"):
        _run(tmp_path, ["mead", "wild"], raw=raw)


def test_mead_separate_audio_tree_and_bad_folders(tmp_path, media_files):
    root = tmp_path / "mead"
    _put(media_files / "silent.mp4", root / "W011" / "video" / "front" / "sad" / "level_2" / "004.mp4")
    _put(media_files / "tone.wav", root / "W011" / "audio" / "sad" / "level_2" / "004.wav")
    _put(media_files / "muxed.mp4", root / "W011" / "video" / "front" / "sleepy" / "level_2" / "001.mp4")
    _put(media_files / "muxed.mp4", root / "W011" / "video" / "front" / "sad" / "level_7" / "001.mp4")
    _put(media_files / "muxed.mp4", root / "stray.mp4")
    manifest, rejects = _run(tmp_path, [root])
    assert list(manifest["clip_id"]) == ["W011_sad_2_004"]
    assert manifest.loc[0, "audio_path"].endswith("W011/audio/sad/level_2/004.wav")
    reasons = dict(zip(rejects["path"].map(lambda p: p.split("/mead/")[1]), rejects["reason"]))
    assert "unknown emotion folder 'sleepy'" in reasons["W011/video/front/sleepy/level_2/001.mp4"]
    assert "level_7" in reasons["W011/video/front/sad/level_7/001.mp4"]
    assert "outside the MEAD layout" in reasons["stray.mp4"]


def test_flat_folder_muxed_and_wav_beside(tmp_path, media_files):
    root = tmp_path / "wild"
    _put(media_files / "muxed.mp4", root / "WRA_AdamKinzinger_000.mp4")
    _put(media_files / "silent.mp4", root / "RD_Radio31_001.mp4")
    _put(media_files / "tone.wav", root / "RD_Radio31_001.wav")
    assert D.detect_layout(D._videos(root, D.DiscoverConfig().extensions)) == "flat"
    manifest, rejects = _run(tmp_path, [root])
    assert len(rejects) == 0
    m = manifest.set_index("clip_id")
    assert set(m.index) == {"wild_WRA_AdamKinzinger_000", "wild_RD_Radio31_001"}
    muxed, silent = m.loc["wild_WRA_AdamKinzinger_000"], m.loc["wild_RD_Radio31_001"]
    assert bool(muxed.has_audio) and muxed.audio_path == muxed.video_path
    assert not bool(silent.has_audio) and silent.audio_path.endswith("RD_Radio31_001.wav")
    assert (muxed.speaker, silent.speaker) == ("WRA_AdamKinzinger", "RD_Radio31")
    assert (muxed.emotion, muxed.level, muxed.subset) == ("", 0, "wild")


def test_folder_with_labels_csv(tmp_path, media_files):
    root = tmp_path / "clips"
    _put(media_files / "muxed.mp4", root / "alice" / "take1.mp4")
    _put(media_files / "muxed.mp4", root / "alice" / "take2.mp4")
    _put(media_files / "muxed.mp4", root / "bob" / "sub" / "x.mp4")
    _put(media_files / "muxed.mp4", root / "carol" / "y.mp4")
    (root / "labels.csv").write_text(
        "path,speaker,emotion,level\n"
        "alice/take1.mp4,,happy,2\n"
        "bob/sub/x.mp4,robert,Sad,\n"
        "carol/y.mp4,,hapy,1\n"
        "gone/z.mp4,dan,angry,1\n"
    )
    manifest, rejects = _run(tmp_path, [root])
    m = manifest.set_index("clip_id")
    assert set(m.index) == {"clips_alice_take1", "clips_alice_take2", "clips_bob_sub_x"}
    assert tuple(m.loc["clips_alice_take1", ["speaker", "emotion", "level"]]) == ("alice", "happy", 2)
    assert tuple(m.loc["clips_alice_take2", ["speaker", "emotion", "level"]]) == ("alice", "", 0)
    assert tuple(m.loc["clips_bob_sub_x", ["speaker", "emotion", "level"]]) == ("robert", "sad", 1)
    reasons = dict(zip(rejects["path"].map(lambda p: p.split("/clips/")[1]), rejects["reason"]))
    assert "unknown emotion 'hapy'" in reasons["carol/y.mp4"]
    assert "listed in labels.csv but not found" in reasons["gone/z.mp4"]


def test_labels_csv_without_path_column_is_an_error(tmp_path, media_files):
    root = tmp_path / "clips"
    _put(media_files / "muxed.mp4", root / "a.mp4")
    (root / "labels.csv").write_text("file,emotion\na.mp4,happy\n")
    with pytest.raises(TalkError, match="needs a 'path' column"):
        _run(tmp_path, [root])


def test_unusable_files_are_rejected_with_reasons(tmp_path, media_files):
    root = tmp_path / "wild"
    _put(media_files / "muxed.mp4", root / "good.mp4")
    data = (media_files / "muxed.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("this is a text file, renamed\n" * 20)
    _put(media_files / "silent.mp4", root / "mute.mp4")  # no audio, no wav
    _put(media_files / "silent.mp4", root / "mismatch.mp4")
    _put(media_files / "long.wav", root / "mismatch.wav")  # 4x the video's length
    _put(media_files / "short.mp4", root / "short.mp4")
    _put(media_files / "tone.wav", root / "audio_only.mp4")  # a wav renamed: no video stream
    manifest, rejects = _run(tmp_path, [root])
    assert list(manifest["clip_id"]) == ["wild_good"]
    assert list(rejects.columns) == list(M.REJECT_COLUMNS)
    reasons = dict(zip(rejects["path"].map(lambda p: p.split("/")[-1]), rejects["reason"]))
    assert set(reasons) == {"truncated.mp4", "empty.mp4", "notes.mp4", "mute.mp4", "mismatch.mp4", "short.mp4", "audio_only.mp4"}
    assert "not a readable media file" in reasons["truncated.mp4"]
    assert reasons["empty.mp4"] == "empty file"
    assert "not a readable media file" in reasons["notes.mp4"]
    assert reasons["mute.mp4"] == "no audio track and no audio file with the same stem"
    assert "max_av_gap" in reasons["mismatch.mp4"]
    assert "too short" in reasons["short.mp4"]
    assert reasons["audio_only.mp4"] == "no video stream"
    assert set(rejects["subset"]) == {"wild"}


def test_zero_usable_clips_is_an_error_and_writes_nothing(tmp_path, media_files):
    root = tmp_path / "wild"
    _put(media_files / "silent.mp4", root / "mute.mp4")
    (root / "notes.mp4").write_text("not a video")
    with pytest.raises(TalkError, match=r"no usable clips .*2 rejected"):
        _run(tmp_path, [root])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_or_overlapping_roots_are_errors(tmp_path, media_files):
    root = _mead_tree(tmp_path / "mead", media_files, speakers=("M003",))
    with pytest.raises(TalkError, match="data root not found"):
        _run(tmp_path, [root, tmp_path / "nope"])
    with pytest.raises(TalkError, match="overlap"):
        _run(tmp_path, [root, root / "M003"])


def test_params_validation(tmp_path):
    with pytest.raises(TalkError, match="sum to 1"):
        P.load(_params(tmp_path, ["x"], fractions=[0.5, 0.1, 0.1]))
    with pytest.raises(TalkError, match="speaker"):
        P.load(_params(tmp_path, ["x"], speaker_pattern="(.+)"))
    with pytest.raises(TalkError, match="unknown key 'seeds'"):
        P.load(_params(tmp_path, ["x"], seeds=1))


def _clips(n_speakers, per_speaker, subset="s"):
    rows = [{"speaker": f"sp{i:02d}", "subset": subset} for i in range(n_speakers) for _ in range(per_speaker + i % 3)]
    return pd.DataFrame(rows)


def test_split_is_speaker_disjoint_deterministic_and_near_fractions():
    clips = pd.concat([_clips(40, 5, "mead"), _clips(12, 2, "wild"),
                       pd.DataFrame([{"speaker": s, "subset": "mead"} for s in ("M003", "W015") for _ in range(6)])])
    a = D.split_speakers(clips, (0.7, 0.15, 0.15), D.DiscoverConfig().test_speakers, seed=3)
    assert a == D.split_speakers(clips, (0.7, 0.15, 0.15), D.DiscoverConfig().test_speakers, seed=3)
    assert a != D.split_speakers(clips, (0.7, 0.15, 0.15), D.DiscoverConfig().test_speakers, seed=4)
    assert a["M003"] == a["W015"] == "test"
    assert set(a) == set(clips["speaker"])  # one split per speaker: disjoint by construction
    split = clips["speaker"].map(a)
    for subset in ("mead", "wild"):
        share = split[clips["subset"] == subset].value_counts(normalize=True)
        assert set(share.index) == {"train", "val", "test"}
        assert share["val"] == pytest.approx(0.15, abs=0.1) and share["test"] == pytest.approx(0.15, abs=0.1)


def test_split_keeps_train_for_tiny_subsets():
    two = _clips(2, 3)
    a = D.split_speakers(two, (0.8, 0.1, 0.1), (), seed=0)
    assert sorted(a.values()) == ["test", "train"]
    assert D.split_speakers(_clips(1, 3), (0.8, 0.1, 0.1), (), seed=0) == {"sp00": "train"}
    assert set(D.split_speakers(_clips(5, 3), (1.0, 0.0, 0.0), (), seed=0).values()) == {"train"}


def test_cli_discover_writes_outputs(tmp_path, media_files, runner):
    root = _mead_tree(tmp_path / "mead", media_files, speakers=("M003", "M005", "W011"))
    params = _params(tmp_path, [root])
    result = runner.invoke(app, ["discover", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "rejected" in result.output
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert len(manifest) == 6 and (tmp_path / "out" / "rejects.csv").is_file()
    dry = runner.invoke(app, ["discover", "--params", str(params), "--dry-run", "--set", "discover.seed=7"])
    assert dry.exit_code == 0 and "seed: 7" in dry.output


def test_cli_bad_root_is_one_line_exit_2(tmp_path, runner):
    params = _params(tmp_path, [tmp_path / "missing"])
    result = runner.invoke(app, ["discover", "--params", str(params)])
    assert result.exit_code == 2
    assert "data root not found" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_preprocess_runs_its_stages_in_order(tmp_path, media_files, runner, monkeypatch):
    import talk.cli.preprocess as pre

    monkeypatch.setattr(pre, "PIPELINE", ("discover",))  # the later stages have their own tests
    root = _mead_tree(tmp_path / "mead", media_files, speakers=("M003", "M005"))
    result = runner.invoke(app, ["preprocess", "--params", str(_params(tmp_path, [root]))])
    assert result.exit_code == 0, result.output
    assert "preprocess: ran discover" in result.output
    assert len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == 4


@pytest.mark.skipif(not (SHARED_SAMPLES / "video").is_dir(), reason="no /work/shared/samples")
def test_real_sample_videos(tmp_path):
    manifest, rejects = _run(tmp_path, [SHARED_SAMPLES / "video"])
    videos = sorted((SHARED_SAMPLES / "video").glob("*.mp4"))  # the folder grows; every video is usable
    assert len(manifest) == len(videos) and len(rejects) == 0
    m = manifest.set_index("clip_id")
    obama = m.loc["video_styletalk__Obama_clip1"]
    assert obama.speaker == "styletalk__Obama" and not bool(obama.has_audio)
    assert obama.audio_path.endswith("styletalk__Obama_clip1.wav") and obama.fps == 30
    face = m.loc["video_videoretalking__face_5"]
    assert bool(face.has_audio) and (face.width, face.height) == (524, 524)
    assert (manifest.groupby("speaker")["split"].nunique() == 1).all()
    assert set(manifest["split"]) == {"train", "val", "test"}


def test_split_of_the_sample_data_has_several_identities_in_val_and_test():
    """The default split (params.yaml discover) of sample_data's shape: 24 labelled speakers x 8
    clips (M003, W009 are MEAD test speakers) and 14 unlabelled wild speakers, one of them (M004)
    a portrait person too: >= 4 test and >= 2 val identities, none in train; wild keeps its fractions."""
    cfg = P.load(ROOT / "params.yaml").discover
    mead = [f"M{i:03d}" for i in range(1, 15)] + [f"W{i:03d}" for i in range(1, 11)]
    wild = ["M004"] * 4 + [f"wild{i:02d}" for i in range(13)]
    clips = pd.DataFrame([{"speaker": s, "subset": "mead", "emotion": e} for s in mead for e in EMOTIONS]
                         + [{"speaker": s, "subset": "wild", "emotion": ""} for s in wild])
    for seed in range(5):
        a = D.split_speakers(clips, cfg.fractions, cfg.test_speakers, seed, cfg.min_speakers)
        by = {split: {s for s in mead if a[s] == split} for split in ("train", "val", "test")}
        assert len(by["test"]) >= 4 and len(by["val"]) >= 2 and len(by["train"]) >= 16, (seed, by)
        assert {"M003", "W009"} <= by["test"]
        assert not (by["train"] & by["test"]) and not (by["train"] & by["val"]) and not (by["val"] & by["test"])
        assert 8 * len(by["test"]) >= 32  # evaluate.max_clips labelled test clips exist
        wild_split = clips.loc[clips.subset == "wild", "speaker"].map(a)
        assert (wild_split == "train").mean() >= 0.6  # the real videos stay mostly in training
    assert P.load(ROOT / "params.yaml").evaluate.max_clips >= 32


def test_min_speakers_give_way_to_a_train_speaker():
    clips = pd.DataFrame([{"speaker": f"s{i}", "subset": "m", "emotion": "happy"} for i in range(4) for _ in range(3)])
    a = D.split_speakers(clips, (0.8, 0.1, 0.1), (), 0, (1, 2, 4))
    assert sorted(a.values()) == ["test", "test", "train", "val"]  # test first, one left for val and train
