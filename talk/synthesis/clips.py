"""The sample clips: MEAD-like emotional talking clips with exact ground truth, made from the
real portraits and speech of the sources (docs/method.md §1 "Data": MEAD's 8 emotions x 3 levels,
frontal view).

- ``SampleConfig``: params.yaml ``sample_data`` (what is generated and how).
- ``screen_portraits``: the dlib check of every portrait before it is warped
  (talk/synthesis/rig.py ``portrait_problem``); a portrait with no face, several faces, a face too
  small or an open mouth is dropped with its reason.
- ``plan``: one ``ClipJob`` per (speaker, emotion, level, utterance). With
  ``levels_per_identity`` each speaker gets that many of the levels per emotion, rotated over
  speakers and emotions (every speaker has every emotion; the levels spread over the speakers);
  neutral clips sit in ``level_1`` only, as in MEAD, with as many clips as each other emotion.
- ``ClipMaker``: one clip. The portrait is warped over its dlib landmarks
  (talk/synthesis/expressions.py): the emotion's brows, lids, mouth corners, lips and jaw at the
  level's intensity; the mouth opening following the speech loudness frame by frame; blinks;
  small head motion. The speech is a real utterance re-spoken with the emotion's pitch, tempo and
  energy (talk/synthesis/prosody.py). Writes the 25 fps H.264 + AAC clip and its ground truth
  (``write_gt``: per frame ``frame, mouth_open, emotion, level, speaker, x0..x67, y0..y67``).
- ``make_clips``: every job, in worker processes or inline; ``write_index``: one row per clip;
  ``write_dropped``: one row per dropped portrait.

Deterministic for a given seed: every clip draws from its own seed (seed, clip key), whatever the
number of workers.
"""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing as mp
import zlib
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np

from talk.core.errors import TalkError
from talk.core.params import rng
from talk.media import io as media
from talk.media import landmarks as L
from talk.models.emotions import EMOTIONS, LEVELS
from talk.synthesis import expressions as E
from talk.synthesis import prosody
from talk.synthesis import rig as R
from talk.synthesis.sources import Source

@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """params.yaml ``sample_data``: writes ``<paths.raw>/mead`` (and ``<paths.raw>/wild``)."""

    wild: bool = True  # also copy the real in-the-wild talking videos of the sources to <paths.raw>/wild (flat, HDTF-like)
    identities: tuple[str, ...] = ()  # speaker ids of portraits in <sources>/MANIFEST.tsv; empty = all
    min_face_iod: float = dataclasses.field(default=40.0, metadata=rng(8))  # px between the eyes in the photo; smaller faces are dropped (upscaled too far)
    max_mouth_open: float = dataclasses.field(default=0.12, metadata=rng(0, 1))  # IOD, inner-lip gap of the photo; more open mouths are dropped (the neutral face must be closed)
    emotions: tuple[str, ...] = EMOTIONS  # emotions generated (models/emotions.py names)
    levels: tuple[int, ...] = dataclasses.field(default=LEVELS, metadata=rng(1, 3))  # intensity levels generated
    levels_per_identity: int = dataclasses.field(default=1, metadata=rng(0, 3))  # levels per (speaker, emotion), rotated over speakers and emotions; 0 = all
    utterances: int = dataclasses.field(default=1, metadata=rng(1))  # clips per (speaker, emotion, level) cell
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

    def rig_spec(self) -> R.RigSpec:
        return R.RigSpec(size=self.size, face_scale=self.face_scale)


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


def clip_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def identities(cfg: SampleConfig, sources: list[Source]) -> tuple[str, ...]:
    """The speaker ids asked for (``cfg.identities``, else every portrait's), TalkError for unknown ones."""
    portraits = {s.speaker for s in sources if s.kind == "portrait"}
    ids = cfg.identities or tuple(sorted(portraits))
    unknown = [i for i in ids if i not in portraits]
    if unknown:
        raise TalkError(f"sample_data.identities: no portrait for {', '.join(unknown)} (known: {', '.join(sorted(portraits))})")
    return ids


def _problem(args: tuple[Path, SampleConfig]) -> str:
    import cv2

    path, cfg = args
    cv2.setNumThreads(1)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return "not a readable image"
    return R.portrait_problem(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), cfg.rig_spec(), cfg.min_face_iod, cfg.max_mouth_open)


def screen_portraits(cfg: SampleConfig, sources: list[Source]) -> list[dict]:
    """The portraits of the identities asked for that cannot be warped: one row each (file,
    speaker, reason), in identity order; checked in ``cfg.workers`` processes."""
    portraits = {s.speaker: s for s in sources if s.kind == "portrait"}
    todo = [portraits[i] for i in identities(cfg, sources)]
    args = [(s.file, cfg) for s in todo]
    workers = min(cfg.workers, len(todo))
    if workers <= 1:
        reasons = [_problem(a) for a in args]
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            reasons = pool.map(_problem, args)
    return [{"file": s.file.name, "speaker": s.speaker, "reason": r} for s, r in zip(todo, reasons) if r]


def plan(cfg: SampleConfig, sources: list[Source], seed: int, dropped: Collection[str] = ()) -> list[ClipJob]:
    """The clips to make: one job per (speaker, emotion, level, utterance), speakers in
    ``dropped`` left out (their rotation slot kept, so the others' clips stay the same)."""
    portraits = {s.speaker: s for s in sources if s.kind == "portrait"}
    speech = [s for s in sources if s.kind == "speech"]
    ids = identities(cfg, sources)
    if not [i for i in ids if i not in dropped]:
        raise TalkError(f"sample_data: no usable portrait left ({len(dropped)} dropped by the face check)")
    if not speech:
        raise TalkError("no speech recordings in the sources manifest (kind 'speech')")
    n_levels = cfg.levels_per_identity or len(cfg.levels)
    if n_levels > len(cfg.levels):
        raise TalkError(f"sample_data.levels_per_identity: {n_levels} is more than the {len(cfg.levels)} levels generated")
    jobs = []
    for slot, speaker in enumerate(ids):
        if speaker in dropped:
            continue
        src = portraits[speaker]
        plain = [s for s in speech if not s.emotion]
        if cfg.voice_match and src.gender:
            same = [s for s in plain if s.gender in (src.gender, "")]
            if len(same) >= cfg.utterances:
                plain = same
        voice = float(clip_rng(seed, f"voice/{speaker}").uniform(-cfg.voice_spread, cfg.voice_spread))
        for e, emotion in enumerate(cfg.emotions):
            # acted emotional recordings join the pool of their own emotion only
            acted = [s for s in speech if s.emotion == emotion and (not cfg.voice_match or s.gender in (src.gender, ""))]
            pool = plain + acted
            levels = sorted(cfg.levels[(slot + e + t) % len(cfg.levels)] for t in range(n_levels))
            cells = [(1, cfg.utterances * n_levels)] if emotion == "neutral" else [(k, cfg.utterances) for k in levels]
            for level, n in cells:
                r = clip_rng(seed, f"pick/{speaker}/{emotion}/{level}")
                order = r.permutation(len(pool))
                picks = [pool[order[i % len(pool)]] for i in range(n)]
                for u, s in enumerate(picks, 1):
                    rel = f"{speaker}/video/front/{emotion}/level_{level}/{u:03d}.mp4"
                    jobs.append(ClipJob(f"{speaker}/{emotion}/{level}/{u:03d}", rel, speaker, src.file, emotion, level, s.file, voice))
    return jobs


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


class ClipMaker:
    """Per-process caches: rigs by portrait, speech samples by file."""

    def __init__(self, cfg: SampleConfig, seed: int):
        import cv2

        cv2.setNumThreads(1)
        self.cfg, self.seed = cfg, seed
        self.rigs: dict[Path, R.FaceRig] = {}
        self.speech: dict[Path, np.ndarray] = {}

    def rig(self, path: Path) -> R.FaceRig:
        if path not in self.rigs:
            import cv2

            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise TalkError(f"{path}: not a readable image")
            self.rigs[path] = R.rig_from_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.cfg.rig_spec(), str(path))
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
        r = clip_rng(self.seed, job.key)

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
        centre = 0.5 * (base[np.r_[L.LEFT_EYE, L.RIGHT_EYE]].mean(0) + base[list(L.MOUTH_CORNERS)].mean(0))
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


_WORKER: ClipMaker | None = None


def _init(cfg: SampleConfig, seed: int) -> None:
    global _WORKER
    _WORKER = ClipMaker(cfg, seed)


def _work(args: tuple[ClipJob, Path]) -> dict:
    assert _WORKER is not None
    return _WORKER(*args)


def make_clips(jobs: list[ClipJob], cfg: SampleConfig, seed: int, out: Path, advance: Callable[[], None]) -> list[dict]:
    """Make every job's clip under ``out``: index rows sorted by path. ``advance`` after each clip."""
    rows: list[dict] = []
    workers = min(cfg.workers, len(jobs))
    if workers <= 1:
        _init(cfg, seed)
        for job in jobs:
            rows.append(_work((job, out)))
            advance()
    else:
        # spawn: workers start clean (no inherited torch / OpenMP state); each builds the
        # rigs it needs once. Jobs are grouped by speaker so a worker reuses its rigs.
        with mp.get_context("spawn").Pool(workers, _init, (cfg, seed)) as pool:
            per = max(1, len(jobs) // len({j.speaker for j in jobs}))  # one speaker per chunk: its rig built once
            for row in pool.imap_unordered(_work, [(j, out) for j in jobs], chunksize=min(per, 16)):
                rows.append(row)
                advance()
    return sorted(rows, key=lambda r: r["path"])


def write_index(rows: list[dict], path: Path) -> None:
    """``index.csv``: one row per clip (source utterance, prosody, frames, mouth statistics)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def write_dropped(rows: list[dict], path: Path) -> None:
    """``dropped.tsv``: the portraits the face check dropped (file, speaker, reason); header only when none."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["file", "speaker", "reason"], delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
