"""Clip-level data for the emotion / style prior: expression landmarks + Whisper features per clip.

Reads what crop_align and audio_features wrote (docs/pipeline.md): ``<crops>/manifest.csv``,
each clip's ``landmarks.npy`` (T, 68, 2) and ``<audio_features>/<clip_id>.npy`` (2T, L, D).

Visual expression features (DICE-Talk §3.1 "facial-expression features") are the landmarks with
the speaker's identity shape removed:
1. per frame, a similarity normalisation: origin between the eye centres, x axis along the eyes,
   unit = inter-ocular distance (IOD) — head position, roll and scale go away;
2. minus the speaker's *template*: the mean normalised shape over that speaker's neutral clips
   (``template="neutral"``; all clips when the speaker has none) or over all their clips.
A reference clip of an unknown person is normalised by the population template (the mean of the
training speakers' templates) or by a neutral clip of the same person (`talk embed --neutral`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from talk.audio.features import check_feature_frames
from talk.core.errors import TalkError
from talk.data.crops import clip_file, read_manifest
from talk.models.emotions import EMOTIONS, emotion_id

LEFT_EYE = slice(36, 42)  # dlib 68: the subject's right eye, on the image's left
RIGHT_EYE = slice(42, 48)
NEUTRAL = EMOTIONS.index("neutral")


def normalise_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) pixels -> (T, 68, 2) in IOD units, eyes on the x axis, origin between the eyes.

    Frames with a non-finite point, or with both eyes at one place, become NaN.
    """
    p = np.asarray(landmarks, np.float64)
    if p.ndim != 3 or p.shape[1:] != (68, 2):
        raise TalkError(f"landmarks must be (T, 68, 2), got {p.shape}")
    left = p[:, LEFT_EYE].mean(1)  # (T, 2)
    right = p[:, RIGHT_EYE].mean(1)
    origin = (left + right) / 2
    axis = right - left  # (T, 2)
    iod = np.linalg.norm(axis, axis=1)  # (T,)
    bad = ~np.isfinite(p).all((1, 2)) | ~(iod > 1e-6)
    iod = np.where(bad, 1.0, iod)
    c, s = axis[:, 0] / iod, axis[:, 1] / iod
    rot = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], 1)  # (T, 2, 2): rotates the eye axis onto +x
    out = np.einsum("tij,tkj->tki", rot, p - origin[:, None]) / iod[:, None, None]
    out[bad] = np.nan
    return out.astype(np.float32)


def mean_shape(normalised: list[np.ndarray]) -> np.ndarray | None:
    """Mean (68, 2) over the valid frames of several normalised clips; None when none is valid."""
    frames = np.concatenate([n.reshape(-1, 68, 2) for n in normalised]) if normalised else np.zeros((0, 68, 2))
    frames = frames[np.isfinite(frames).all((1, 2))]
    return frames.mean(0).astype(np.float32) if len(frames) else None


def expression_features(normalised: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 68, 2) normalised landmarks minus a (68, 2) template -> (T, 136) offsets, (T,) valid mask."""
    x = (normalised - template[None]).reshape(len(normalised), -1)
    valid = np.isfinite(x).all(1)
    return np.where(valid[:, None], x, 0).astype(np.float32), valid


@dataclasses.dataclass
class Clip:
    clip_id: str
    speaker: str
    emotion: int  # index in EMOTIONS, -1 when unlabelled
    level: int  # 1..3, 0 when unlabelled
    split: str
    landmarks: np.ndarray  # (T, 68, 2) normalised (IOD units), NaN rows where no face
    audio_file: Path  # <clip_id>.npy: (2T, L, D) float16 Whisper states

    @property
    def n_frames(self) -> int:
        return len(self.landmarks)

    @property
    def audio(self) -> np.ndarray:
        """(2T, L, D) float16, memory-mapped on each access (no file stays open between batches)."""
        return np.load(self.audio_file, mmap_mode="r", allow_pickle=False)





def check_features(path: Path, n_frames: int, layers: int, dim: int, clip_id: str) -> Path:
    """``path`` after checking the clip's Whisper features (2T, L, D) against the clip and the embedder."""
    if not path.is_file():
        raise TalkError(f"audio features of clip {clip_id} not found at {path}: run talk audio-features")
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise TalkError(f"{path}: not a readable .npy array ({e})") from None
    if a.ndim != 3 or a.shape[1:] != (layers, dim):
        raise TalkError(f"{path}: features are {a.shape}, model.prior expects (2T, {layers}, {dim}); "
                        f"set model.prior.audio_layers / audio_dim to the Whisper model used")
    check_feature_frames(len(a), n_frames, str(path))
    return path


class ClipSet:
    """All clips of a crops manifest: landmarks in memory, audio read per batch, expression features."""

    def __init__(self, clips: list[Clip], template: str = "neutral"):
        self.clips = clips
        self.template_kind = template
        self.speakers = sorted({c.speaker for c in clips})
        self.speaker_index = {s: i for i, s in enumerate(self.speakers)}
        self.templates = self._speaker_templates(template)
        train_speakers = sorted({c.speaker for c in clips if c.split == "train"}) or self.speakers
        self.population = np.mean([self.templates[s] for s in train_speakers], 0).astype(np.float32)  # (68, 2)
        self._expr = {}  # (clip index, "speaker" | "population") -> ((T, 136), (T,))

    @classmethod
    def load(cls, crops: Path, features: Path, layers: int, dim: int, template: str = "neutral") -> ClipSet:
        crops, features = Path(crops), Path(features)
        df = read_manifest(crops)
        clips = []
        for row in df.itertuples(index=False):
            path = clip_file(crops, row, "landmarks.npy")
            try:
                lm = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise TalkError(f"{path}: not a readable .npy array ({e}); re-run `talk crop-align`") from None
            if lm.ndim != 3 or lm.shape[1:] != (68, 2) or len(lm) == 0:
                raise TalkError(f"{path}: expected (T, 68, 2), got {lm.shape}; re-run `talk crop-align`")
            emo = emotion_id(row.emotion)
            clips.append(Clip(
                clip_id=row.clip_id,
                speaker=str(row.speaker),
                emotion=emo,
                level=int(row.level) if emo >= 0 else 0,
                split=row.split,
                landmarks=normalise_landmarks(lm),
                audio_file=check_features(features / f"{row.clip_id}.npy", len(lm), layers, dim, row.clip_id),
            ))
        return cls(clips, template)

    def _speaker_templates(self, kind: str) -> dict[str, np.ndarray]:
        out = {}
        for s in self.speakers:
            own = [c.landmarks for c in self.clips if c.speaker == s]
            neutral = [c.landmarks for c in self.clips if c.speaker == s and c.emotion == NEUTRAL]
            t = mean_shape(neutral) if kind == "neutral" and neutral else None
            t = t if t is not None else mean_shape(own)
            if t is None:
                raise TalkError(f"speaker {s}: no frame with a face in any clip")
            out[s] = t
        return out

    def __len__(self) -> int:
        return len(self.clips)

    def indices(self, split: str | None = None, labelled: bool | None = None) -> list[int]:
        return [
            i for i, c in enumerate(self.clips)
            if (split is None or c.split == split) and (labelled is None or (c.emotion >= 0) == labelled)
        ]

    def expression(self, i: int, template: str = "speaker") -> tuple[np.ndarray, np.ndarray]:
        """Clip ``i``'s (T, 136) expression offsets and (T,) valid mask."""
        key = (i, template)
        if key not in self._expr:
            c = self.clips[i]
            ref = self.templates[c.speaker] if template == "speaker" else self.population
            self._expr[key] = expression_features(c.landmarks, ref)
        return self._expr[key]

    def visual_scale(self, indices: list[int]) -> np.ndarray:
        """Per-channel std of the expression offsets over ``indices`` (136,), for the embedder's input scale."""
        x = np.concatenate([self.expression(i)[0][self.expression(i)[1]] for i in indices])
        return np.maximum(x.std(0), 1e-3).astype(np.float32) if len(x) else np.ones(136, np.float32)

    def batch(
        self,
        indices: list[int],
        starts: list[int] | None = None,
        n_frames: int | None = None,
        population: list[bool] | None = None,
    ) -> dict[str, np.ndarray]:
        """Windows of ``n_frames`` from ``starts`` (whole clips when None), padded and masked.

        Returns audio (B, 2n, L, D) float32, audio_mask (B, 2n), visual (B, n, 136), visual_mask (B, n).
        """
        lengths = [self.clips[i].n_frames for i in indices]
        n = n_frames or max(lengths)
        starts = starts or [0] * len(indices)
        population = population or [False] * len(indices)
        audios = [self.clips[i].audio for i in indices]
        L, D = audios[0].shape[1:]
        B = len(indices)
        audio = np.zeros((B, 2 * n, L, D), np.float32)
        amask = np.zeros((B, 2 * n), bool)
        visual = np.zeros((B, n, 136), np.float32)
        vmask = np.zeros((B, n), bool)
        for b, (i, s, pop, clip_audio) in enumerate(zip(indices, starts, population, audios)):
            c = self.clips[i]
            x, valid = self.expression(i, "population" if pop else "speaker")
            seg = slice(s, min(s + n, c.n_frames))
            k = seg.stop - seg.start
            visual[b, :k] = x[seg]
            vmask[b, :k] = valid[seg]
            a = clip_audio[2 * s: 2 * s + 2 * k]
            audio[b, : len(a)] = a
            amask[b, : len(a)] = True
        return {"audio": audio, "audio_mask": amask, "visual": visual, "visual_mask": vmask}
