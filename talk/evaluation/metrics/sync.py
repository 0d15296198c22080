"""Lip sync without a SyncNet: mouth opening against the audio loudness envelope.

- Mouth opening per frame: the dlib inner-lip gap (mean of the three facing inner-lip point pairs
  61-67, 62-66, 63-65) divided by the inter-ocular distance, so it is scale-free.
- Loudness per frame: RMS of the 16 kHz audio over the frame's 40 ms (640 samples at 25 fps),
  in dB with a floor (silence does not dominate the correlation).
- ``sync_corr``: Pearson correlation of the two series at offset 0; ``sync_offset``: the offset
  (frames, positive = the mouth lags the sound) of the highest correlation within +-N frames.

A frozen mouth (the floor baseline repeating its reference frame) has no variance: its
correlation is defined as 0. ``pauses`` finds the silent stretches of the audio, where a real
speaker's mouth is closed: a renderer whose mouth keeps moving in them is not lip-syncing even if
its correlation is high. SyncNet Sync-C / Sync-D live in ``talk.evaluation.metrics.external``.
"""

from __future__ import annotations

import numpy as np

from talk.media.landmarks import INNER_LIP_PAIRS, interocular

AUDIO_RATE = 16_000  # Hz
FPS = 25  # video frames/s
LOUDNESS_FLOOR_DB = -60.0  # dB re full scale: quieter frames count as this


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap / inter-ocular distance, (T,), from landmarks (T, 68, 2)."""
    lm = np.asarray(landmarks, np.float64)
    upper = lm[:, [a for a, _ in INNER_LIP_PAIRS]]  # (T, 3, 2)
    lower = lm[:, [b for _, b in INNER_LIP_PAIRS]]
    gap = np.linalg.norm(lower - upper, axis=-1).mean(-1)  # (T,)
    return gap / np.maximum(interocular(lm), 1e-6)


def loudness(audio: np.ndarray, n_frames: int, rate: int = AUDIO_RATE, fps: int = FPS) -> np.ndarray:
    """RMS loudness in dB (T,) of each video frame's span of audio (zero-padded at the end)."""
    hop = rate // fps
    a = np.zeros(n_frames * hop, np.float64)
    src = np.asarray(audio, np.float64)[: n_frames * hop]
    a[: len(src)] = src
    rms = np.sqrt(np.mean(a.reshape(n_frames, hop) ** 2, axis=1))
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), LOUDNESS_FLOOR_DB)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either series is constant (or shorter than 3)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if len(x) < 3:
        return 0.0
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    if den < 1e-12:
        return 0.0
    return float((x * y).sum() / den)


def lagged_correlation(opening: np.ndarray, loud: np.ndarray, max_offset: int) -> np.ndarray:
    """Correlation of opening[t] with loud[t - k] for k = -max_offset..max_offset, (2N + 1,)."""
    n = len(opening)
    out = np.zeros(2 * max_offset + 1)
    for i, k in enumerate(range(-max_offset, max_offset + 1)):
        if k >= 0:
            out[i] = pearson(opening[k:], loud[: n - k])
        else:
            out[i] = pearson(opening[: n + k], loud[-k:])
    return out


def best_offset(curve: np.ndarray) -> int:
    """Offset (frames) of the maximum of a ``lagged_correlation`` curve."""
    max_offset = (len(curve) - 1) // 2
    return int(np.argmax(curve)) - max_offset


SPEECH_LEVEL_PERCENTILE = 95  # the clip's speech level: this percentile of its per-frame loudness


def pauses(loud: np.ndarray, pause_db: float, min_frames: int, trim: int) -> np.ndarray:
    """(T,) bool: frames inside a pause of the loudness series ``loud`` (dB, ``loudness``).

    A frame is quiet at ``pause_db`` below the clip's speech level (its 95th-percentile loudness)
    or at the loudness floor; a pause is a run of at least ``min_frames`` quiet frames, less
    ``trim`` frames at each end (the mouth closes after the sound stops and opens before it starts).
    """
    loud = np.asarray(loud, np.float64)
    if len(loud) == 0:
        return np.zeros(0, bool)
    level = np.percentile(loud, SPEECH_LEVEL_PERCENTILE)
    quiet = (loud <= level - pause_db) | (loud <= LOUDNESS_FLOOR_DB)
    out = np.zeros(len(loud), bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):  # runs [start, stop) of quiet frames
        if stop - start >= min_frames:
            out[start + trim: max(start + trim, stop - trim)] = True
    return out


def speech(loud: np.ndarray, pause_db: float) -> np.ndarray:
    """(T,) bool: frames within ``pause_db`` of the clip's speech level (the complement of quiet)."""
    loud = np.asarray(loud, np.float64)
    if len(loud) == 0:
        return np.zeros(0, bool)
    level = np.percentile(loud, SPEECH_LEVEL_PERCENTILE)
    return (loud > level - pause_db) & (loud > LOUDNESS_FLOOR_DB)
