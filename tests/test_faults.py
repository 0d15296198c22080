"""Fault injection (issue 16, docs/reliability.md): damaged copies of every artefact and media kind,
bad outputs and conflicting options get exit 2 and one line; SIGKILL / SIGTERM during a render
and a training stage leave no partial output, and the re-run succeeds (and resumes).

Artefacts of the training-only kinds (LMDB cache, clip embeddings, checkpoints, discriminator)
are damaged in tests/test_artifacts.py; here are the ones `talk render` and `talk embed` read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner
from render_fixture import make_artifacts, portrait, speech

from talk.cli.main import app
from talk.core import fs
from talk.core.errors import TalkError
from talk.media import io as media

ROOT = Path(__file__).resolve().parents[1]
HOWS = ("truncated", "zeroed", "garbled")


def damage(path: Path, how: str) -> Path:
    """truncated: the first half; zeroed: as many zero bytes; garbled: the same length of noise;
    middle: noise over the middle third (the header and the ends intact)."""
    data = bytearray(path.read_bytes())
    n = len(data)
    rng = np.random.default_rng(n)
    if how == "truncated":
        data = data[: n // 2]
    elif how == "zeroed":
        data = bytearray(n)
    elif how == "garbled":
        data = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    elif how == "middle":
        data[n // 3: 2 * n // 3] = rng.integers(0, 256, 2 * n // 3 - n // 3, dtype=np.uint8).tobytes()
    else:
        raise ValueError(how)
    path.write_bytes(bytes(data))
    return path


def one_line(result) -> str:
    """The one red line of a user error (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def faststart(src: Path, dst: Path) -> Path:
    """Remux with the index first (moov before the data), so that a truncated copy still opens."""
    with av.open(str(src)) as i, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for packet in i.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            o.mux(packet)
    return dst


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    torch.set_num_threads(1)
    return make_artifacts(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """face.png, speech.wav (2 s), clip.mp4 (2 s, faces-free frames + speech) and its faststart copy."""
    d = tmp_path_factory.mktemp("inputs")
    cv2.imwrite(str(d / "face.png"), cv2.cvtColor(portrait(64), cv2.COLOR_RGB2BGR))
    media.write_wav(d / "speech.wav", speech(2.0))
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(128, 40, (64, 64, 3)), 0, 255).astype(np.uint8) for _ in range(50)]
    media.write_video(d / "clip.mp4", frames, audio=speech(2.0))
    faststart(d / "clip.mp4", d / "clip_fast.mp4")
    return d


def copy_arts(arts: dict, dst: Path) -> dict:
    """A private copy of the artefacts whose denoiser names the copy's whisper.pt."""
    shutil.copytree(arts["vae"].parent, dst)
    info = dst / "finetune_disc" / "inference.json"
    data = json.loads(info.read_text())
    data["audio"]["whisper"] = str(dst / "whisper.pt")
    info.write_text(json.dumps(data))
    return {"vae": dst / "vae", "prior": dst / "prior", "denoiser": dst / "finetune_disc", "whisper": dst / "whisper.pt"}


def params_file(path: Path, a: dict, **render) -> Path:
    path.write_text(yaml.safe_dump({
        "render": {"sampling": {"steps": 1}, **render},
        "paths": {"vae": str(a["vae"]), "prior": str(a["prior"]), "finetune_disc": str(a["denoiser"]),
                  "cache": str(path.parent / "cache")},
        "audio_features": {"whisper": str(a["whisper"])},
    }))
    return path


def render_args(params: Path, image: Path, audio: Path, out: Path, *extra: str) -> list[str]:
    return ["render", "--params", str(params), "--image", str(image), "--audio", str(audio), "--no-crop",
            "--out", str(out), *extra]


# --------------------------------------------------------------------------------------------
# Damaged artefacts: every file `talk render` / `talk embed` reads


RENDER_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors", "prior/config.json",
                "prior/model.safetensors", "prior/presets.safetensors", "finetune_disc/config.json",
                "finetune_disc/model.safetensors", "finetune_disc/scheduler_config.json",
                "finetune_disc/inference.json", "whisper.pt")
STAGES = {"vae": "fit-vae", "prior": "pretrain-prior", "finetune_disc": "finetune-disc"}


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("name", RENDER_FILES)
def test_damaged_artefact_render_is_one_line(arts, inputs, tmp_path, runner, name, how):
    a = copy_arts(arts, tmp_path / "arts")
    damage(tmp_path / "arts" / name, how)
    out = tmp_path / "o.mp4"
    line = one_line(runner.invoke(app, render_args(params_file(tmp_path / "p.yaml", a), inputs / "face.png",
                                                   inputs / "speech.wav", out)))
    assert str(tmp_path / "arts" / name) in line, line
    folder = name.split("/")[0]
    if folder in STAGES:  # names the command that writes the file again
        assert f"talk {STAGES[folder]}" in line or "talk train-diffusion" in line, line
    assert not out.exists() and not list(tmp_path.glob(".o.mp4*"))


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("name", ("prior/config.json", "prior/model.safetensors", "prior/presets.safetensors", "whisper.pt"))
def test_damaged_artefact_embed_is_one_line(arts, inputs, tmp_path, runner, name, how):
    a = copy_arts(arts, tmp_path / "arts")
    damage(tmp_path / "arts" / name, how)
    out = tmp_path / "e.npz"
    line = one_line(runner.invoke(app, ["embed", str(inputs / "speech.wav"), "--params", str(params_file(tmp_path / "p.yaml", a)),
                                        "--out", str(out)]))
    assert str(tmp_path / "arts" / name) in line, line
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Damaged media


MEDIA = {  # (input, damage) -> what the render / embed error says
    ("speech.wav", "truncated"): "truncated",
    ("speech.wav", "zeroed"): "speech.wav",
    ("speech.wav", "garbled"): "speech.wav",
    ("clip.mp4", "truncated"): "not a readable media file",  # the index (moov) is at the end: nothing opens
    ("clip.mp4", "zeroed"): "clip.mp4",
    ("clip.mp4", "garbled"): "clip.mp4",
    ("clip.mp4", "middle"): "damaged audio: corrupt data at",
    ("clip_fast.mp4", "truncated"): "damaged audio: only",
    ("clip_fast.mp4", "middle"): "damaged audio: corrupt data at",
}


@pytest.mark.parametrize("name, how", list(MEDIA))
def test_damaged_speech_render_is_one_line_before_any_model(arts, inputs, tmp_path, runner, name, how):
    bad = damage(shutil.copy(inputs / name, tmp_path / name), how)
    missing = {**arts, "vae": tmp_path / "no_vae"}  # the audio is checked before any artefact is looked at
    out = tmp_path / "o.mp4"
    line = one_line(runner.invoke(app, render_args(params_file(tmp_path / "p.yaml", missing), inputs / "face.png", bad, out)))
    assert str(bad) in line and MEDIA[name, how] in line, line
    assert not out.exists()


@pytest.mark.parametrize("name, how", [("clip.mp4", "middle"), ("clip_fast.mp4", "truncated"), ("clip.mp4", "zeroed")])
def test_damaged_clip_embed_is_one_line(arts, inputs, tmp_path, runner, name, how):
    bad = damage(shutil.copy(inputs / name, tmp_path / name), how)
    line = one_line(runner.invoke(app, ["embed", str(bad), "--audio-only", "--params", str(params_file(tmp_path / "p.yaml", arts)),
                                        "--out", str(tmp_path / "e.npz")]))
    assert str(bad) in line, line
    assert not (tmp_path / "e.npz").exists()


@pytest.mark.parametrize("how", HOWS)
def test_damaged_portrait_is_one_line(arts, inputs, tmp_path, runner, how):
    bad = damage(shutil.copy(inputs / "face.png", tmp_path / "face.png"), how)
    line = one_line(runner.invoke(app, render_args(params_file(tmp_path / "p.yaml", arts), bad, inputs / "speech.wav",
                                                   tmp_path / "o.mp4")))
    assert "face.png" in line, line


def test_decoding_reports_what_decodes(inputs, tmp_path, caplog):
    """Non-strict readers keep what decodes and warn once with the seconds kept; strict ones raise."""
    from talk.core import runtime

    clean = media.decoded_duration(inputs / "clip.mp4")
    assert not clean.damaged and clean.kind == "video" and abs(clean.seconds - 2.0) < 0.05
    short = damage(shutil.copy(inputs / "clip_fast.mp4", tmp_path / "short.mp4"), "truncated")
    report = media.decoded_duration(short)
    assert report.short and report.expected == pytest.approx(2.0, abs=0.05) and report.seconds < 1.5
    middle = damage(shutil.copy(inputs / "clip.mp4", tmp_path / "middle.mp4"), "middle")
    assert media.decoded_duration(middle, "audio").errors > 0
    wav = damage(shutil.copy(inputs / "speech.wav", tmp_path / "speech.wav"), "truncated")
    assert media.decoded_duration(wav).short  # a wav's own header says 2 s (FFmpeg says 1 s)

    runtime.log.propagate, old = True, runtime.log.propagate
    try:
        with caplog.at_level("WARNING", logger="talk"):
            frames = media.read_video(short)
            samples = media.read_audio(wav)
    finally:
        runtime.log.propagate = old
    assert len(frames) == pytest.approx(report.seconds * 25, abs=3) and len(samples) == pytest.approx(16000, abs=50)
    assert "only" in caplog.text and "kept" in caplog.text
    for reader in (lambda: media.read_video(short, strict=True), lambda: media.read_audio(middle, strict=True)):
        with pytest.raises(TalkError, match="damaged"):
            reader()


def test_discover_records_decoded_length_and_crop_align_rejects(inputs, tmp_path, root):
    """discover: the manifest's duration is what decodes; crop_align: a clip shorter than its
    container says is a reject with the reason, not a silently shorter crop."""
    import pandas as pd

    from talk.core import params as P
    from talk.stages import crop_align, discover

    raw = tmp_path / "wild"
    raw.mkdir()
    short = damage(shutil.copy(inputs / "clip_fast.mp4", raw / "WRA_Short_000.mp4"), "truncated")
    shutil.copy(inputs / "clip.mp4", raw / "WRA_Whole_000.mp4")
    manifest, rejects = tmp_path / "manifest.csv", tmp_path / "rejects.csv"
    over = [f"discover.roots=[{raw}]", f"paths.manifest={manifest}", f"paths.rejects={rejects}", "discover.min_duration=0.2"]
    discover.run(P.load(root / "params.yaml", over))
    m = pd.read_csv(manifest, keep_default_na=False).set_index("clip_id")
    assert m.loc["wild_WRA_Whole_000", "duration"] == pytest.approx(2.0, abs=0.05)
    assert m.loc["wild_WRA_Short_000", "duration"] < 1.5  # the container says 2.0 s

    crops = tmp_path / "crops"
    with pytest.raises(TalkError, match="no clip survived"):  # the whole clip has no face either
        crop_align.run(P.load(root / "params.yaml", [f"paths.manifest={manifest}", f"paths.crops={crops}",
                                                     "crop_align.workers=1", "crop_align.min_frames=5"]))
    rej = pd.read_csv(crops / "rejects.csv", keep_default_na=False).set_index("clip_id")
    assert "no face" in rej.loc["wild_WRA_Whole_000", "reason"]
    assert "damaged video: " in rej.loc["wild_WRA_Short_000", "reason"]
    assert str(short) not in rej.loc["wild_WRA_Short_000", "reason"]  # the table has the path already


# --------------------------------------------------------------------------------------------
# Outputs and options, checked before any model loads


def test_bad_outputs_fail_before_any_model_loads(arts, inputs, tmp_path, runner):
    missing = params_file(tmp_path / "p.yaml", {**arts, "vae": tmp_path / "no_vae", "prior": tmp_path / "no_prior"})
    (tmp_path / "dir.mp4").mkdir()
    cases = {
        tmp_path / "dir.mp4": "is an existing folder",
        Path("/proc/x.mp4"): "cannot write in /proc",
        tmp_path / "x.mov": "must end in .mp4",
        tmp_path / "file" / "x.mp4": "cannot write in",  # the parent is a file
    }
    (tmp_path / "file").write_text("")
    for out, says in cases.items():
        line = one_line(runner.invoke(app, render_args(missing, inputs / "face.png", inputs / "speech.wav", out)))
        assert says in line and str(out) in line, line
    for out, says in {tmp_path / "x.txt": "must end in .npz", Path("/proc/e.npz"): "cannot write in /proc",
                      tmp_path / "dir.mp4": "is an existing folder"}.items():
        line = one_line(runner.invoke(app, ["embed", str(inputs / "speech.wav"), "--params", str(missing), "--out", str(out)]))
        assert says in line, line
    assert not (tmp_path / "x.txt").exists() and not list(tmp_path.glob(".*probe"))


def test_conflicting_or_empty_emotion_options_are_errors(arts, inputs, tmp_path, runner):
    params = params_file(tmp_path / "p.yaml", arts)
    base = render_args(params, inputs / "face.png", inputs / "speech.wav", tmp_path / "o.mp4")
    cases = {
        ("--emotion", "angry", "--blend", "happy:1"): "--emotion and --blend",
        ("--blend", ""): "--blend ''",
        ("--emotion", "sad", "--emotion-from", str(inputs / "speech.wav")): "--emotion and --emotion-from",
        ("--blend", "happy:1", "--level", "2"): "--level",
        ("--sampler", "heun"): "--schedule window",
        ("--style-from", "style/NOBODY"): "presets:",
    }
    for extra, says in cases.items():
        line = one_line(runner.invoke(app, [*base, *extra]))
        assert says in line, (extra, line)
    assert not (tmp_path / "o.mp4").exists()


def test_style_preset_error_lists_the_presets(arts, tmp_path, runner, inputs):
    from talk.artifacts.prior import load_presets, save_presets

    a = copy_arts(arts, tmp_path / "arts")
    presets = {k: (m.numpy(), v.numpy()) for k, (m, v) in load_presets(a["prior"] / "presets.safetensors").items()}
    presets["style/M001"] = tuple(x.copy() for x in presets["emotion/neutral"])
    save_presets(a["prior"] / "presets.safetensors", presets, "test")
    line = one_line(runner.invoke(app, render_args(params_file(tmp_path / "p.yaml", a), inputs / "face.png",
                                                   inputs / "speech.wav", tmp_path / "o.mp4", "--style-from", "M002")))
    assert "--style-from M002" in line and "style/M001" in line, line


def test_no_face_names_the_image(arts, inputs, tmp_path, runner):
    args = render_args(params_file(tmp_path / "p.yaml", arts), inputs / "face.png", inputs / "speech.wav", tmp_path / "o.mp4")
    args.remove("--no-crop")
    line = one_line(runner.invoke(app, args))
    assert "no face found" in line and str(inputs / "face.png") in line, line


def test_heun_with_window_schedule_renders_and_audio_ends_with_the_video(arts, inputs, tmp_path, runner):
    out = tmp_path / "o.mp4"
    result = runner.invoke(app, render_args(params_file(tmp_path / "p.yaml", arts), inputs / "face.png", inputs / "speech.wav",
                                            out, "--sampler", "heun", "--schedule", "window"))
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        video_s, audio_s = float(v.duration * v.time_base), float(a.duration * a.time_base)
    assert video_s == pytest.approx(2.0) and video_s - 0.065 < audio_s <= video_s
    assert len(media.read_audio(out)) <= 2.0 * 16000
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


# --------------------------------------------------------------------------------------------
# Temporaries: SIGTERM cleans up, the next run removes a SIGKILLed run's


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    out = tmp_path / "x.mp4"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".x.mp4.{dead.pid}-{fs.HOST}.abc.tmp"
    stale.mkdir()
    (stale / "x.mp4").write_bytes(b"partial")
    other = tmp_path / f".y.mp4.{dead.pid}-{fs.HOST}.abc.tmp"  # another output's, dead: removed too
    other.mkdir()
    live = tmp_path / f".x.mp4.{os.getppid()}-{fs.HOST}.abc.tmp"  # a running process's: kept
    live.mkdir()
    remote = tmp_path / f".x.mp4.{dead.pid}-0000beef.abc.tmp"  # another machine's (shared storage): kept
    remote.mkdir()
    fs.atomic_write_bytes(out, b"whole")
    assert out.read_bytes() == b"whole" and not stale.exists() and not other.exists()
    assert live.exists() and remote.exists()
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(f".x.mp4.{os.getpid()}-*"))


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _talk(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "talk.cli.main", *args], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 240.0) -> str:
    """Send ``sig`` once ``ready()`` holds (polled), then wait; returns the output."""
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"finished before the signal: {proc.stdout.read()}"
        assert time.monotonic() - t0 < timeout, "never got ready"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return out


@pytest.mark.slow
def test_render_killed_leaves_nothing_and_reruns(arts, inputs, tmp_path):
    """SIGKILL mid-write leaves a temporary (nothing can clean it then), SIGTERM mid-write removes
    its own and the SIGKILLed one; neither leaves an mp4; the re-run writes a whole one."""
    params = params_file(tmp_path / "p.yaml", arts)
    media.write_wav(tmp_path / "long.wav", speech(30.0))
    out = tmp_path / "o.mp4"
    temps = lambda: list(tmp_path.glob(".o.mp4.*.tmp"))  # noqa: E731
    writing = lambda: any(p.glob("o.mp4") for p in temps())  # noqa: E731  the encoder has opened its file

    proc = _talk(*render_args(params, inputs / "face.png", tmp_path / "long.wav", out))
    _kill_when(proc, writing, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL and not out.exists() and len(temps()) == 1
    killed = temps()[0]

    proc = _talk(*render_args(params, inputs / "face.png", tmp_path / "long.wav", out))
    text = _kill_when(proc, lambda: writing() and not killed.exists(), signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "Traceback" not in text and not out.exists() and temps() == [], text

    result = CliRunner().invoke(app, render_args(params, inputs / "face.png", inputs / "speech.wav", out))  # in-process: no start-up
    assert result.exit_code == 0, result.output
    assert len(media.read_video(out)) == 50 and temps() == []


def _prior_params(tmp: Path) -> Path:
    from prior_fixture import make_prior_fixture
    from test_prior import TINY_BANK, TINY_PRIOR

    crops, feats = make_prior_fixture(tmp, {"A": "train", "B": "train", "C": "val", "D": "test"}, clips_per=2,
                                      n_frames=40, layers=TINY_PRIOR["audio_layers"], dim=TINY_PRIOR["audio_dim"])
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump({
        "base": {"threads": 1},
        "paths": {"cache": str(tmp / "cache"), "crops": str(crops), "audio_features": str(feats), "prior": str(tmp / "prior")},
        "model": {"prior": TINY_PRIOR, "bank": TINY_BANK},
        "pretrain_prior": {"window": 1.0, "eval_every": 10, "patience": 100, "restart_every": 10,
                           "loop": {"steps": 400, "batch_size": 8, "checkpoint_every": 5, "keep_checkpoints": 2, "lr_schedule": "constant"}},
    }))
    return path


@pytest.mark.slow
def test_training_stage_killed_leaves_no_output_and_resumes(tmp_path):
    """pretrain-prior: SIGKILL after a checkpoint, SIGTERM after the next; no final files and no
    temporaries are left; the re-run resumes from the newest checkpoint and finishes."""
    params = _prior_params(tmp_path)
    out = tmp_path / "prior"
    steps = lambda: sorted(p.name for p in out.glob("checkpoints/*/step-*"))  # noqa: E731
    temps = lambda: [p for p in tmp_path.rglob(".*.tmp")]  # noqa: E731

    proc = _talk("pretrain-prior", "--params", str(params))
    _kill_when(proc, lambda: len(steps()) >= 1, signal.SIGKILL)
    first = steps()
    assert first and not (out / "model.safetensors").exists()

    proc = _talk("pretrain-prior", "--params", str(params))
    text = _kill_when(proc, lambda: steps() and steps()[-1] > first[-1], signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "resumed from" in text and "Traceback" not in text, text
    assert not (out / "model.safetensors").exists() and temps() == [], (text, temps())

    before = steps()[-1]
    data = yaml.safe_load(params.read_text())
    data["pretrain_prior"]["loop"]["steps"] = int(before.split("-")[1]) + 5  # finish soon after
    params.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["pretrain-prior", "--params", str(params)])  # in-process: no start-up
    text = result.output
    assert result.exit_code == 0, text
    assert "resumed from" in text and before in text, text
    assert (out / "model.safetensors").is_file() and temps() == []


def test_batch_outputs_are_checked_before_any_model(arts, inputs, tmp_path, runner):
    missing = params_file(tmp_path / "p.yaml", {**arts, "vae": tmp_path / "no_vae"})
    (tmp_path / "taken.mp4").mkdir()
    (tmp_path / "jobs.csv").write_text("image,audio,emotion,intensity,out\n"
                                       f"{inputs / 'face.png'},{inputs / 'speech.wav'},happy,0.5,a.mp4\n"
                                       f"{inputs / 'face.png'},{inputs / 'speech.wav'},sad,0.5,taken.mp4\n")
    line = one_line(runner.invoke(app, ["render", "--params", str(missing), "--batch", str(tmp_path / "jobs.csv")]))
    assert "jobs.csv:3: out" in line and "existing folder" in line, line
    assert not (tmp_path / "a.mp4").exists()
    (tmp_path / "mixed.csv").write_text("image,audio,emotion,intensity,out,blend\n"
                                        f"{inputs / 'face.png'},{inputs / 'speech.wav'},angry,0.5,b.mp4,happy:1\n")
    line = one_line(runner.invoke(app, ["render", "--params", str(missing), "--batch", str(tmp_path / "mixed.csv")]))
    assert "mixed.csv:2: emotion and blend each set the emotion" in line, line


def test_damaged_crop_video_names_crop_align(arts, inputs, tmp_path):
    """A crop (crop_align's frames.mp4) is read strictly: a skipped packet would shift the frames."""
    from talk.artifacts.vae import load_vae
    from talk.data import crops, latent_cache

    rng = np.random.default_rng(1)
    frames = [np.clip(rng.normal(128, 40, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(50)]
    bad = tmp_path / "frames.mp4"
    media.write_video(bad, frames, pix_fmt="yuv444p")
    damage(bad, "middle")
    vae, _, _ = load_vae(arts["vae"])
    with pytest.raises(TalkError, match="damaged video.*re-run `talk crop-align`"):
        latent_cache.encode_clip(vae, bad, 32, 8, "float32")
    with pytest.raises(TalkError, match="damaged video.*re-run `talk crop-align`"):
        crops.read_frames(bad, [0, 49], 32)
