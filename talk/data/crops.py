"""The crops contract (crop_align's output, docs/pipeline.md "Crops"): the crop manifest and the
files of each clip folder, read and checked the same way by every consumer.

``<crops>/manifest.csv`` has one row per clip: ``clip_id`` (file-safe, unique), ``speaker``,
``emotion`` (a MEAD label, or empty for unlabelled clips), ``level`` (1..3, 0 unlabelled),
``split`` (train / val / test), ``n_frames`` (> 0) and ``crop_dir`` (the clip's folder). A clip
folder holds ``frames.mp4`` (S px, 25 fps), ``audio.wav`` (16 kHz mono) and ``landmarks.npy``
(T, 68, 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from talk.core.errors import TalkError
from talk.media import io as media
from talk.models.emotions import EMOTIONS

COLUMNS = ("clip_id", "speaker", "emotion", "level", "split", "n_frames", "crop_dir")
SPLITS = ("train", "val", "test")
FILES = ("frames.mp4", "audio.wav", "landmarks.npy")  # what a clip folder holds
REBUILD = "re-run `talk crop-align`"


def read_manifest(crops: Path | str) -> pd.DataFrame:
    """``<crops>/manifest.csv``, checked: columns, non-empty, unique file-safe ids, positive whole
    frame counts, known emotions and splits. ``emotion`` / ``crop_dir`` are strings ('' = none),
    ``level`` and ``n_frames`` ints."""
    path = Path(crops) / "manifest.csv"
    if not path.is_file():
        raise TalkError(f"crop manifest {path} not found (run `talk crop-align` first)")
    try:
        df = pd.read_csv(path, dtype={c: str for c in ("clip_id", "speaker", "emotion", "split", "crop_dir")},
                         keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TalkError(f"{path}: not a readable CSV ({type(e).__name__}); {REBUILD}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise TalkError(f"{path}: missing column(s) {', '.join(missing)}; {REBUILD}")
    if len(df) == 0:
        raise TalkError(f"{path}: the crop manifest has no clips")
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        raise TalkError(f"{path}: duplicate clip_id '{dup.iloc[0]}'")
    bad = [c for c in df["clip_id"] if not c or "/" in c or c.startswith(".")]
    if bad:
        raise TalkError(f"{path}: clip_id {bad[0]!r} is not a file-safe name")
    for col, lo in (("n_frames", 1), ("level", 0)):
        raw = df[col].replace("", "0" if col == "level" else "")
        n = pd.to_numeric(raw, errors="coerce")
        wrong = n.isna() | (n < lo) | (n != n.round())
        if wrong.any():
            row = df[wrong].iloc[0]
            raise TalkError(f"{path}: clip '{row['clip_id']}' has {col} {row[col]!r} (needs a whole number >= {lo})")
        df[col] = n.astype(int)
    unknown = sorted(set(df["emotion"]) - set(EMOTIONS) - {""})
    if unknown:
        raise TalkError(f"{path}: unknown emotion(s) {', '.join(unknown)} (known: {', '.join(EMOTIONS)})")
    unknown = sorted(set(df["split"]) - set(SPLITS))
    if unknown:
        raise TalkError(f"{path}: unknown split(s) {', '.join(map(str, unknown))} (expected {', '.join(SPLITS)})")
    return df


def clip_folder(crops: Path | str, crop_dir: str, clip_id: str) -> Path:
    """A clip's folder from its manifest ``crop_dir``: absolute; relative to ``crops``; relative
    to the working directory (as crop_align writes it); or ``<crops>/<name>``."""
    crops = Path(crops)
    p = Path(crop_dir) if crop_dir else Path(clip_id)
    candidates = [p] if p.is_absolute() else [crops / p, p, crops / p.name]
    for c in candidates:
        if c.is_dir():
            return c
    raise TalkError(f"clip {clip_id}: no folder {p} (nor {crops / p.name}); {REBUILD}")


def clip_file(crops: Path | str, row, name: str) -> Path:
    """``<clip folder>/<name>`` of a manifest row (one of ``FILES``), which must exist."""
    path = clip_folder(crops, str(getattr(row, "crop_dir", "") or ""), str(row.clip_id)) / name
    if not path.is_file():
        raise TalkError(f"clip {row.clip_id}: {path} not found; {REBUILD}")
    return path


def read_frames(path: Path, indices: Sequence[int], size: int) -> np.ndarray:
    """Frames ``indices`` (sorted, unique) of a crop video -> (n, size, size, 3) uint8."""
    want = sorted(set(int(i) for i in indices))
    out, k = [], 0
    try:  # strict: a skipped corrupt packet would shift the frame indices
        for t, frame in enumerate(media.iter_video(path, fps=None, strict=True)):
            if t == want[k]:
                out.append(frame)
                k += 1
                if k == len(want):
                    break
    except TalkError as e:
        raise TalkError(f"{e}; {REBUILD}") from None
    if len(out) < len(want):
        raise TalkError(f"{path}: {t + 1} frames, wanted frame {want[-1]}; {REBUILD}")
    frames = np.stack(out)
    if frames.shape[1:] != (size, size, 3):
        raise TalkError(f"{path}: frames are {frames.shape[2]}x{frames.shape[1]}, model.image_size is {size}")
    return frames
