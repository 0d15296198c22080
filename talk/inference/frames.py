"""Inputs and outputs of a render: portrait and speech files, frame counts at 25 fps, paste-back of
the generated crop into the full picture, the output audio track, and the demo contact sheet."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from talk.core.errors import TalkError
from talk.media import io as media

FPS = media.VIDEO_FPS  # 25 frames/s
HOP = media.AUDIO_RATE // FPS  # 640 audio samples (16 kHz) per video frame


def load_speech(audio: str | Path | np.ndarray) -> np.ndarray:
    """Mono 16 kHz float32 samples from a file (any format PyAV reads) or an array."""
    if isinstance(audio, np.ndarray):
        samples = np.asarray(audio, np.float32).reshape(-1)
    else:
        samples = media.read_audio(Path(audio), media.AUDIO_RATE, strict=True)  # damaged speech: an error
    if samples.size < HOP // 2:
        raise TalkError(f"{audio if not isinstance(audio, np.ndarray) else 'audio'}: too short to render "
                        f"(needs at least {1000 / FPS / 2:.0f} ms)")
    if not np.all(np.isfinite(samples)):
        raise TalkError("audio holds NaN or infinite samples")
    return samples


def frame_count(n_samples: int) -> int:
    """Video frames (25 fps) for ``n_samples`` of 16 kHz audio: the nearest whole frame (halves round
    up), at least 1."""
    return max(1, int(math.floor(n_samples / HOP + 0.5)))


def load_image(image: str | Path | np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a file or an array (RGB or grey)."""
    import cv2

    if isinstance(image, np.ndarray):
        img = np.asarray(image)
    else:
        path = Path(image)
        if not path.is_file():
            raise TalkError(f"image not found: {path}")
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:  # not an image cv2 reads: try a video's first frame
            try:
                img = next(media.iter_video(path, fps=None))
            except (TalkError, StopIteration):
                raise TalkError(f"{path}: not a readable image") from None
        else:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 8:
        raise TalkError(f"expected an RGB image, got an array of shape {img.shape}")
    return np.ascontiguousarray(img[..., :3], dtype=np.uint8)


def feather_mask(size: int, feather: float) -> np.ndarray:
    """(size, size) float32 mask: 1 inside, a linear ramp to 0 over ``feather``·size px at the edges."""
    ramp = max(1.0, feather * size)
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32) + 0.5  # px to the nearest edge
    edge = np.clip(d / ramp, 0.0, 1.0)
    return np.minimum(edge[:, None], edge[None, :])


def paste_frame(crop: np.ndarray, picture: np.ndarray, M: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Put a generated crop (S, S, 3) back into the picture (H, W, 3) it was cut from.

    ``M`` (2, 3) maps picture px -> crop px (``faces.Aligner``); the crop and its feathered mask
    are warped by the inverse map and alpha-blended over the picture. Output size = the picture's.
    """
    import cv2

    h, w = picture.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    M = np.asarray(M, np.float64)
    face = cv2.warpAffine(crop, M, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, M, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
    out = alpha * face.astype(np.float32) + (1 - alpha) * picture.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def even_frames(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Pad odd frame sizes by one edge row / column (H.264 yuv420p needs even sizes)."""
    for f in frames:
        h, w = f.shape[:2]
        if h % 2 or w % 2:
            f = np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        yield f


def original_audio(path: Path) -> tuple[np.ndarray, int]:
    """The file's own audio (mono) at its own rate (capped at 48 kHz) for the output mp4."""
    rate = media.probe(path).audio_rate or media.AUDIO_RATE
    rate = min(rate, 48_000)
    return media.read_audio(path, rate, strict=True), rate


def fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to exactly ``n`` samples (the video's length)."""
    out = np.zeros(n, np.float32)
    out[: min(n, len(samples))] = samples[:n]
    return out


def contact_sheet(rows: dict[str, np.ndarray], n: int, size: int) -> np.ndarray:
    """One row per name: ``n`` evenly spaced frames of its (T, H, W, 3) video, ``size`` px each,
    the name drawn on the first -> (rows * size, n * size, 3) uint8."""
    import cv2

    sheet = []
    for name, frames in rows.items():
        pick = np.linspace(0, len(frames) - 1, n).round().astype(int)
        cells = [cv2.resize(frames[i], (size, size), interpolation=cv2.INTER_AREA) for i in pick]
        label = np.ascontiguousarray(cells[0])
        cv2.putText(label, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(label, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cells[0] = label
        sheet.append(np.concatenate(cells, axis=1))
    return np.concatenate(sheet, axis=0)
