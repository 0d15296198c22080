"""The clips `evaluate` scores (docs/method.md §3, MEAD protocol): which clips, the frame each is
rendered from, the real frames and audio, the floor renderer, and the check of a renderer's output.

A renderer is ``render_fn(ref_frame, audio, emotion, level) -> (T, H, W, 3) uint8``. The reference
(``evaluate.reference``) is the clip's first frame, or the first frame of the same speaker's
neutral clip, so that the reference does not already show the emotion asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from talk.core.errors import TalkError
from talk.data.crops import clip_file
from talk.media import io as media

RenderFn = Callable[[np.ndarray, np.ndarray, str, int], np.ndarray]
HOP = media.AUDIO_RATE // media.VIDEO_FPS  # audio samples per video frame (640)


@dataclasses.dataclass
class Clip:
    clip_id: str
    speaker: str
    emotion: str
    level: int
    frames: np.ndarray  # (T, H, W, 3) uint8, the real aligned crops
    audio: np.ndarray  # (T * 640,) float32, 16 kHz
    ref: np.ndarray  # (H, W, 3) uint8, the frame the clip is rendered from


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    """A scored clip's labels, kept after its frames are released."""

    clip_id: str
    speaker: str
    emotion: str
    level: int
    n_frames: int


def repeat_reference(ref_frame: np.ndarray, audio: np.ndarray, emotion: str, level: int) -> np.ndarray:
    """The floor: the reference frame repeated for the audio's length, (T, H, W, 3)."""
    n = max(1, int(round(len(audio) / HOP)))
    return np.repeat(np.asarray(ref_frame, np.uint8)[None], n, axis=0)


def select(df: pd.DataFrame, split: str, max_clips: int) -> pd.DataFrame:
    """Labelled clips of ``split``; with ``max_clips``, spread round-robin over (speaker, emotion)."""
    sel = df[(df.split == split) & (df.emotion != "")].copy()
    sel = sel.sort_values(["speaker", "emotion", "level", "clip_id"], kind="stable")
    sel["_rank"] = sel.groupby(["speaker", "emotion"]).cumcount()
    sel = sel.sort_values(["_rank", "speaker", "emotion", "clip_id"], kind="stable").drop(columns="_rank")
    if max_clips:
        sel = sel.head(max_clips)
    return sel.sort_values(["speaker", "emotion", "level", "clip_id"], kind="stable").reset_index(drop=True)


def neutral_clips(df: pd.DataFrame, split: str) -> dict[str, object]:
    """Speaker -> the row of their neutral clip (same split preferred, then the lowest clip_id)."""
    rows = df[df.emotion == "neutral"].copy()
    rows["_other_split"] = rows.split != split
    rows = rows.sort_values(["_other_split", "clip_id"], kind="stable")
    return {str(r.speaker): r for r in rows.drop_duplicates("speaker").itertuples()}


def load_clip(crops: Path, row, reference: str, max_frames: int, neutral: dict[str, object]) -> tuple[Clip, bool]:
    """The real clip of manifest ``row`` (its first ``max_frames`` frames, 0 = all), its audio cut
    to its frames, and its ``reference`` frame; the flag says whether ``reference: neutral`` had to
    fall back to the clip's own first frame (the speaker has no neutral clip)."""
    frames = media.read_video(clip_file(crops, row, "frames.mp4"))
    if max_frames:
        frames = frames[:max_frames]
    audio = media.read_audio(clip_file(crops, row, "audio.wav"))
    need = len(frames) * HOP
    audio = np.pad(audio[:need], (0, max(0, need - len(audio))))
    ref, fell_back = frames[0], False
    if reference == "neutral":
        other = neutral.get(str(row.speaker))
        if other is None:
            fell_back = True
        elif other.clip_id != row.clip_id:
            ref = next(media.iter_video(clip_file(crops, other, "frames.mp4")))
            if ref.shape != frames[0].shape:
                raise TalkError(f"{other.clip_id}: crop size {ref.shape[:2]} differs from {row.clip_id}'s {frames.shape[1:3]}")
    clip = Clip(row.clip_id, str(row.speaker), row.emotion, int(row.level), frames, audio.astype(np.float32), ref)
    return clip, fell_back


def conform(frames, real: np.ndarray, who: str) -> np.ndarray:
    """Check a renderer's output against the real clip: uint8 (T, H, W, 3); other sizes are
    resized; a length off by up to 2 frames is cut or padded with the last frame."""
    import cv2

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{who}: expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    t, h, w = real.shape[:3]
    if abs(len(frames) - t) > 2:
        raise ValueError(f"{who}: rendered {len(frames)} frames for a {t}-frame clip")
    if frames.shape[1:3] != (h, w):
        frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    if len(frames) < t:
        frames = np.concatenate([frames, np.repeat(frames[-1:], t - len(frames), 0)])
    return np.ascontiguousarray(frames[:t])
