"""The crops contract (crop_align's output, docs/pipeline.md "Crops"): the crop manifest and the
files of each clip folder, read the same way by every consumer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from talk.core.errors import TalkError
from talk.media import io as media


def read_crops(crops: Path):
    """The crop manifest (docs/pipeline.md "Crops"), checked; see talk/data/clips.py."""
    from talk.data.clips import read_manifest

    return read_manifest(Path(crops))


def clip_frames_path(crops: Path, crop_dir: str, clip_id: str) -> Path:
    """``<crop_dir>/frames.mp4``: crop_dir absolute, relative to the working dir or to ``crops``."""
    p = Path(crop_dir) if crop_dir else Path(clip_id)
    candidates = [p] if p.is_absolute() else [p, Path(crops) / p, Path(crops) / p.name, Path(crops) / clip_id]
    for c in candidates:
        if (c / "frames.mp4").is_file():
            return c / "frames.mp4"
    raise TalkError(f"clip {clip_id}: no frames.mp4 in {p} (nor in {Path(crops) / clip_id}); re-run `talk crop-align`")


def read_frames(path: Path, indices: Sequence[int], size: int) -> np.ndarray:
    """Frames ``indices`` (sorted, unique) of a crop video -> (n, size, size, 3) uint8."""
    want = sorted(set(int(i) for i in indices))
    out, k = [], 0
    for t, frame in enumerate(media.iter_video(path, fps=None)):
        if t == want[k]:
            out.append(frame)
            k += 1
            if k == len(want):
                break
    if len(out) < len(want):
        raise TalkError(f"{path}: {t + 1} frames, wanted frame {want[-1]} (re-run `talk crop-align`)")
    frames = np.stack(out)
    if frames.shape[1:] != (size, size, 3):
        raise TalkError(f"{path}: frames are {frames.shape[2]}x{frames.shape[1]}, model.image_size is {size}")
    return frames
