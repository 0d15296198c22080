"""Stage `sample_data`: the embedded sample dataset, MEAD-like clips with ground truth.

Real portraits and real speech carried in the repo (``paths.sources``, attribution in its
MANIFEST.tsv) become emotional talking clips whose emotion, intensity and lip motion are known
exactly, so that emotion control and lip sync can be *measured* (docs/method.md §1 "Data": MEAD's 8
emotions x 3 levels, frontal view; HDTF-like in-the-wild talking):

- ``<out>/<speaker>/video/front/<emotion>/level_<k>/<nnn>.mp4``: 25 fps H.264 + AAC, the portrait
  warped over its dlib landmarks (talk/synthesis/expressions.py): the emotion's brows, lids, mouth
  corners, lips and jaw at the level's intensity; the mouth opening following the speech
  loudness frame by frame, with a painted mouth cavity; blinks; small head motion. The speech
  is a real utterance re-spoken with the emotion's pitch, tempo and energy (talk/synthesis/prosody.py).
  Neutral clips sit in ``level_1`` only, as in MEAD, with as many clips as the other emotions
  have over all levels.
- ``<nnn>.gt.csv`` beside each clip: per frame ``frame, mouth_open`` (inner-lip gap / inter-ocular
  distance), ``emotion, level, speaker``, the 68 landmarks ``x0..x67, y0..y67`` (frame pixels).
- ``<out>/index.csv`` (one row per clip: source utterance, prosody, frames) and
  ``<out>/params.yaml`` (the resolved config).
- ``<wild_out>/``: the real talking videos of the sources, flat, a same-stem .wav beside a video
  without audio (HDTF-like, unlabelled).

Deterministic for a given ``base.seed``: every clip draws from its own seed (seed, clip key),
whatever the number of workers.
"""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing as mp
import shutil
import time
import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from rich.table import Table

from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_dir
from talk.core.params import rng
from talk.media import io as media
from talk.models.emotions import EMOTIONS, LEVELS
from talk.synthesis import expressions as E
from talk.synthesis import prosody

DEFAULT_IDENTITIES = ("W001", "M001", "M002", "W002", "W003", "W004")


@dataclasses.dataclass(frozen=True)
class Config:
    out: Path = Path("data/raw/mead")  # output: MEAD-layout clips + <nnn>.gt.csv, index.csv, params.yaml
    wild_out: Path = Path("data/raw/wild")  # output: the in-the-wild talking videos (flat), '' to skip
    identities: tuple[str, ...] = DEFAULT_IDENTITIES  # speaker ids of portraits in <sources>/MANIFEST.tsv; empty = all
    emotions: tuple[str, ...] = EMOTIONS  # emotions generated (models/emotions.py names)
    levels: tuple[int, ...] = dataclasses.field(default=LEVELS, metadata=rng(1, 3))  # intensity levels generated
    utterances: int = dataclasses.field(default=2, metadata=rng(1))  # clips per (speaker, emotion, level) cell
    seconds: float = dataclasses.field(default=3.0, metadata=rng(0.4, 30))  # s, length of every clip
    size: int = dataclasses.field(default=256, metadata=rng(64, 1024))  # px, side of the square frames (even)
    face_scale: float = dataclasses.field(default=4.0, metadata=rng(2.5, 8))  # frame side / inter-ocular distance (IOD)
    level_scale: tuple[float, ...] = dataclasses.field(default=(0.5, 0.75, 1.0), metadata=rng(0, 2))  # expression and prosody intensity of levels 1..3 (1 = the tables' values)
    mouth_max: float = dataclasses.field(default=0.38, metadata=rng(0.05, 0.6))  # IOD, extra inner-lip gap at full loudness (dlib tracks gaps up to ~0.4)
    loudness_range_db: float = dataclasses.field(default=24.0, metadata=rng(6, 80))  # dB below the clip's loud level at which the mouth is closed
    mouth_gamma: float = dataclasses.field(default=1.5, metadata=rng(0.2, 5))  # opening = mouth_max * loudness^gamma (>1: closes more between syllables)
    blink_rate: float = dataclasses.field(default=0.3, metadata=rng(0, 2))  # blinks per second (Poisson mean)
    head_roll: float = dataclasses.field(default=2.5, metadata=rng(0, 10))  # degrees, largest head roll
    head_shift: float = dataclasses.field(default=0.06, metadata=rng(0, 0.3))  # IOD, largest head translation
    head_scale: float = dataclasses.field(default=0.02, metadata=rng(0, 0.1))  # largest relative head scale change
    voice_match: bool = True  # portraits speak with voices of their gender (MANIFEST gender) when there are enough
    voice_spread: float = dataclasses.field(default=1.0, metadata=rng(0, 6))  # semitones: per-speaker pitch offset drawn in +-spread
    speech_level: float = dataclasses.field(default=-20.0, metadata=rng(-40, -6))  # dBFS, speech level before the emotion's gain
    crf: int = dataclasses.field(default=18, metadata=rng(0, 51))  # H.264 constant rate factor of the clips
    workers: int = dataclasses.field(default=2, metadata=rng(1, 64))  # processes rendering clips

    def validate(self) -> None:
        bad = [e for e in self.emotions if e not in EMOTIONS]
        if bad or not self.emotions:
            raise TalkError(f"sample_data.emotions: expected names from {', '.join(EMOTIONS)}, got {list(self.emotions)}")
        if len(set(self.emotions)) != len(self.emotions) or len(set(self.levels)) != len(self.levels):
            raise TalkError("sample_data: emotions and levels must not repeat")
        if not self.levels:
            raise TalkError("sample_data.levels: give at least one level")
        if len(self.level_scale) != len(LEVELS):
            raise TalkError(f"sample_data.level_scale: one value per level ({len(LEVELS)}), got {len(self.level_scale)}")
        if self.size % 2:
            raise TalkError(f"sample_data.size: must be even (H.264 yuv420p), got {self.size}")
        if len(set(self.identities)) != len(self.identities):
            raise TalkError("sample_data.identities: a speaker id repeats")
        if self.out == self.wild_out:
            raise TalkError("sample_data.out and sample_data.wild_out are the same folder")

    def rig_spec(self) -> E.RigSpec:
        return E.RigSpec(size=self.size, face_scale=self.face_scale)


# --------------------------------------------------------------------------------------------
# Sources


@dataclasses.dataclass(frozen=True)
class Source:
    file: Path
    kind: str  # portrait | speech | wild_video | wild_audio
    speaker: str
    gender: str  # M | F | '' (unknown)
    emotion: str  # acted emotion of a speech file, '' when unlabelled


def read_sources(root: Path) -> list[Source]:
    """Rows of ``<root>/MANIFEST.tsv`` whose files exist; TalkError naming what is missing."""
    manifest = Path(root) / "MANIFEST.tsv"
    if not manifest.is_file():
        raise TalkError(f"{manifest} not found: paths.sources must hold the sample sources (see data/sources/build.py)")
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing_cols = {"file", "kind"} - set(reader.fieldnames or ())
        if missing_cols:
            raise TalkError(f"{manifest}: missing column(s) {', '.join(sorted(missing_cols))}")
        rows = list(reader)
    out = []
    for r in rows:
        path = Path(root) / r["file"]
        if not path.is_file():
            raise TalkError(f"{path} is listed in {manifest} but missing")
        out.append(Source(path, r["kind"], r.get("speaker", "") or "", r.get("gender", "") or "", r.get("emotion", "") or ""))
    return out


@dataclasses.dataclass(frozen=True)
class ClipJob:
    """Everything a worker needs to make one clip (picklable)."""

    key: str  # e.g. M001/happy/3/002: seeds the clip's randomness
    rel: str  # output path of the .mp4, relative to the output root
    speaker: str
    portrait: Path
    emotion: str
    level: int
    speech: Path
    voice_offset: float  # semitones


def _seed(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def plan(cfg: Config, sources: list[Source], seed: int) -> list[ClipJob]:
    """The clips to make: one job per (speaker, emotion, level, utterance)."""
    portraits = {s.speaker: s for s in sources if s.kind == "portrait"}
    speech = [s for s in sources if s.kind == "speech"]
    ids = cfg.identities or tuple(sorted(portraits))
    unknown = [i for i in ids if i not in portraits]
    if unknown:
        raise TalkError(f"sample_data.identities: no portrait for {', '.join(unknown)} (known: {', '.join(sorted(portraits))})")
    if not speech:
        raise TalkError("no speech recordings in the sources manifest (kind 'speech')")
    jobs = []
    for speaker in ids:
        src = portraits[speaker]
        plain = [s for s in speech if not s.emotion]
        if cfg.voice_match and src.gender:
            same = [s for s in plain if s.gender in (src.gender, "")]
            if len(same) >= cfg.utterances:
                plain = same
        voice = float(_seed(seed, f"voice/{speaker}").uniform(-cfg.voice_spread, cfg.voice_spread))
        for emotion in cfg.emotions:
            # acted emotional recordings join the pool of their own emotion only
            acted = [s for s in speech if s.emotion == emotion and (not cfg.voice_match or s.gender in (src.gender, ""))]
            pool = plain + acted
            cells = [(1, cfg.utterances * len(cfg.levels))] if emotion == "neutral" else [(k, cfg.utterances) for k in cfg.levels]
            for level, n in cells:
                r = _seed(seed, f"pick/{speaker}/{emotion}/{level}")
                order = r.permutation(len(pool))
                picks = [pool[order[i % len(pool)]] for i in range(n)]
                for u, s in enumerate(picks, 1):
                    rel = f"{speaker}/video/front/{emotion}/level_{level}/{u:03d}.mp4"
                    jobs.append(ClipJob(f"{speaker}/{emotion}/{level}/{u:03d}", rel, speaker, src.file, emotion, level, s.file, voice))
    return jobs


# --------------------------------------------------------------------------------------------
# One clip


def _smooth_noise(r: np.random.Generator, n: int, fps: float, lo: float = 0.1, hi: float = 0.6) -> np.ndarray:
    """(n,) smooth random motion in [-1, 1]: three sinusoids of random frequency and phase."""
    t = np.arange(n) / fps
    freqs, phases, weights = r.uniform(lo, hi, 3), r.uniform(0, 2 * np.pi, 3), r.uniform(0.5, 1.0, 3)
    x = (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
    return (x / weights.sum()).astype(np.float32)


def blink_track(r: np.random.Generator, n: int, fps: float, rate: float) -> np.ndarray:
    """(n,) eyelid closure in [0, 1]: Poisson blinks, each 0.5 -> 1 -> 0.6 -> 0.25 over 4 frames."""
    shape = np.array([0.5, 1.0, 0.6, 0.25], np.float32)
    out = np.zeros(n, np.float32)
    if rate <= 0:
        return out
    t = r.exponential(1.0 / rate) * r.uniform(0.2, 1.0)  # the first blink comes a bit sooner
    while True:
        k = int(t * fps)
        if k >= n:
            break
        m = min(len(shape), n - k)
        out[k:k + m] = np.maximum(out[k:k + m], shape[:m])
        t += max(r.exponential(1.0 / rate), (len(shape) + 2) / fps)
    return out


class _Worker:
    """Per-process caches: rigs by portrait, speech samples by file."""

    def __init__(self, cfg: Config, seed: int):
        import cv2

        cv2.setNumThreads(1)
        self.cfg, self.seed = cfg, seed
        self.rigs: dict[Path, E.FaceRig] = {}
        self.speech: dict[Path, np.ndarray] = {}

    def rig(self, path: Path) -> E.FaceRig:
        if path not in self.rigs:
            import cv2

            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise TalkError(f"{path}: not a readable image")
            self.rigs[path] = E.rig_from_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.cfg.rig_spec(), str(path))
        return self.rigs[path]

    def audio(self, job: ClipJob, n_samples: int) -> tuple[np.ndarray, prosody.Prosody]:
        """The clip's speech: the utterance re-spoken with the emotion's prosody, from its onset."""
        if job.speech not in self.speech:
            self.speech[job.speech] = media.read_audio(job.speech)
        x = self.speech[job.speech]
        rate = media.AUDIO_RATE
        p = prosody.scaled(job.emotion, self.cfg.level_scale[job.level - 1])
        p = dataclasses.replace(p, pitch=p.pitch + job.voice_offset)
        y = prosody.apply(x, rate, p, level_db=self.cfg.speech_level)
        start = max(prosody.onset(y, rate) - int(0.1 * rate), 0)
        y = y[start:start + n_samples]
        return np.pad(y, (0, n_samples - len(y))), p

    def __call__(self, job: ClipJob, out_root: Path) -> dict:
        cfg, fps = self.cfg, media.VIDEO_FPS
        rig = self.rig(job.portrait)
        n = int(round(cfg.seconds * fps))
        spf = media.AUDIO_RATE // fps  # samples per video frame
        audio, p = self.audio(job, n * spf)
        r = _seed(self.seed, job.key)

        # per-frame drivers
        env = prosody.loudness_envelope(audio, media.AUDIO_RATE, fps, n, cfg.loudness_range_db)  # (n,) in [0, 1]
        env = np.convolve(np.pad(env, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")  # jaw inertia
        gaps = cfg.mouth_max * env**cfg.mouth_gamma  # (n,) IOD
        blinks = blink_track(r, n, fps, cfg.blink_rate)
        roll = cfg.head_roll * _smooth_noise(r, n, fps)
        shift = cfg.head_shift * rig.unit * np.stack([_smooth_noise(r, n, fps), _smooth_noise(r, n, fps)], 1)  # (n, 2) px
        scale = 1.0 + cfg.head_scale * _smooth_noise(r, n, fps)
        sway = 1.0 + 0.08 * _smooth_noise(r, n, fps, 0.05, 0.2)  # the expression breathes a little
        base = rig.neutral
        centre = 0.5 * (base[list(E.EYE_R) + list(E.EYE_L)].mean(0) + base[[48, 54]].mean(0))
        intensity = cfg.level_scale[job.level - 1] if job.emotion != "neutral" else 0.0
        emo = E.emotion_offsets(base, job.emotion, intensity * float(sway.max()))  # (68, 2) px, the strongest frame
        safe = rig.safe_scale(emo, cfg.mouth_max)  # < 1 only where the portrait would fold
        emo *= safe / float(sway.max())

        frames = np.empty((n, cfg.size, cfg.size, 3), np.uint8)
        marks = np.empty((n, 68, 2), np.float32)
        for t in range(n):
            d = emo * sway[t] + E.mouth_offsets(base, float(gaps[t]))
            d += E.blink_offsets(base + d, float(blinks[t]))
            head = E.similarity(roll[t], scale[t], shift[t], centre)
            verts = rig.pose(d, head)
            frames[t] = rig.render(verts)
            marks[t] = verts[:68]
        mouth = E.mouth_open(marks)  # (n,) IOD units: the lip-sync ground truth

        video = out_root / job.rel
        video.parent.mkdir(parents=True, exist_ok=True)
        media.write_video(video, frames, fps=fps, audio=audio, crf=cfg.crf)
        write_gt(video.with_suffix(".gt.csv"), mouth, marks, job)
        return {
            "path": job.rel, "speaker": job.speaker, "emotion": job.emotion, "level": job.level,
            "frames": n, "speech": job.speech.name, "pitch_st": round(p.pitch, 3), "tempo": round(p.tempo, 4),
            "gain_db": round(p.gain, 2), "expression_scale": safe, "mouth_open_mean": round(float(mouth.mean()), 4),
            "mouth_open_max": round(float(mouth.max()), 4),
        }


def gt_columns() -> list[str]:
    return ["frame", "mouth_open", "emotion", "level", "speaker"] + [f"x{i}" for i in range(68)] + [f"y{i}" for i in range(68)]


def write_gt(path: Path, mouth: np.ndarray, marks: np.ndarray, job: ClipJob) -> None:
    """The ground-truth table of one clip: one row per frame (``gt_columns``)."""
    lines = [",".join(gt_columns())]
    for t in range(len(mouth)):
        xs = ",".join(f"{v:.2f}" for v in marks[t, :, 0])
        ys = ",".join(f"{v:.2f}" for v in marks[t, :, 1])
        lines.append(f"{t},{mouth[t]:.4f},{job.emotion},{job.level},{job.speaker},{xs},{ys}")
    path.write_text("\n".join(lines) + "\n")


_WORKER: _Worker | None = None


def _init(cfg: Config, seed: int) -> None:
    global _WORKER
    _WORKER = _Worker(cfg, seed)


def _work(args: tuple[ClipJob, Path]) -> dict:
    assert _WORKER is not None
    return _WORKER(*args)


# --------------------------------------------------------------------------------------------
# The stage


def _copy_wild(sources: list[Source], out: Path) -> int:
    n = 0
    for s in sources:
        if s.kind in ("wild_video", "wild_audio"):
            shutil.copyfile(s.file, out / s.file.name)
            n += s.kind == "wild_video"
    return n


def _attribution(sources: list[Source], root: Path, kinds: tuple[str, ...], dst: Path) -> None:
    """The sources manifest's rows of the given kinds, copied beside the outputs."""
    with open(Path(root) / "MANIFEST.tsv", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = [r for r in reader if r["kind"] in kinds]
        fields = reader.fieldnames
    with open(dst, "w", newline="") as f:
        w = csv.DictWriter(f, fields, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def run(params) -> dict:
    cfg: Config = params.sample_data
    seed = params.base.seed
    sources = read_sources(params.paths.sources)
    jobs = plan(cfg, sources, seed)
    t0 = time.perf_counter()
    rows: list[dict] = []
    wild_ctx = atomic_dir(cfg.wild_out) if str(cfg.wild_out) not in ("", ".") else nullcontext(None)
    with atomic_dir(cfg.out) as tmp, wild_ctx as tmp_wild:
        workers = min(cfg.workers, len(jobs))
        with runtime.progress() as bar:
            task = bar.add_task("sample clips", total=len(jobs))
            if workers <= 1:
                _init(cfg, seed)
                for job in jobs:
                    rows.append(_work((job, tmp)))
                    bar.advance(task)
            else:
                # spawn: workers start clean (no inherited torch / OpenMP state); each builds the
                # rigs it needs once. Jobs are grouped by speaker so a worker reuses its rigs.
                with mp.get_context("spawn").Pool(workers, _init, (cfg, seed)) as pool:
                    for row in pool.imap_unordered(_work, [(j, tmp) for j in jobs], chunksize=4):
                        rows.append(row)
                        bar.advance(task)
        rows.sort(key=lambda r: r["path"])
        with open(tmp / "index.csv", "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        _attribution(sources, params.paths.sources, ("portrait", "speech"), tmp / "SOURCES.tsv")
        params.write_resolved(tmp / "params.yaml", ["base", "paths", "sample_data"])
        n_wild = 0
        if tmp_wild is not None:
            n_wild = _copy_wild(sources, tmp_wild)
            _attribution(sources, params.paths.sources, ("wild_video", "wild_audio"), tmp_wild / "SOURCES.tsv")
    elapsed = time.perf_counter() - t0

    frames = sum(r["frames"] for r in rows)
    table = Table(title=f"sample_data -> {cfg.out}" + (f", {cfg.wild_out}" if n_wild else ""))
    for col in ("speakers", "emotions", "levels", "clips", "frames", "wild videos", "seconds", "frames/s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(len({r["speaker"] for r in rows})), str(len(cfg.emotions)), str(len(cfg.levels)), str(len(rows)),
        str(frames), str(n_wild), f"{elapsed:.1f}", f"{frames / max(elapsed, 1e-9):.0f}",
    )
    runtime.console.print(table)
    return {"clips": len(rows), "frames": frames, "wild": n_wild, "seconds": elapsed}
