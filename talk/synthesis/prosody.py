"""Emotional prosody on real speech, in numpy: pitch, tempo and energy per emotion and level.

The speech side of the sample dataset (stages/sample_data.py). Acted emotional speech differs
from neutral mostly in mean pitch, speaking rate and loudness (high-arousal emotions: higher,
faster, louder; sad: lower, slower, quieter). Each clip's utterance is re-spoken with:

- ``time_stretch``: WSOLA (waveform-similarity overlap-add): tempo changes, pitch does not.
- ``pitch_shift``-by-resampling: stretching by ``p`` then resampling by ``1/p`` raises pitch by
  ``p`` at the same duration (formants move with it; fine for the few semitones used here).
- a gain in dB on a fixed speech level, then a soft limiter.

``loudness_envelope`` gives the per-video-frame speech level that drives the mouth opening.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from talk.models.emotions import EMOTIONS


@dataclasses.dataclass(frozen=True)
class Prosody:
    pitch: float  # semitones
    tempo: float  # speaking-rate factor (> 1: faster, shorter)
    gain: float  # dB


# Level-3 values; levels interpolate from neutral (``scaled``). Directions follow the acoustic
# profiles of acted emotional speech (arousal raises pitch, rate and energy; sadness lowers all
# three; contempt and disgust are slow and low).
PROSODY_TABLE: Mapping[str, Prosody] = {
    "neutral": Prosody(0.0, 1.00, 0.0),
    "angry": Prosody(2.0, 1.10, 6.0),
    "contempt": Prosody(-1.0, 0.93, -2.0),
    "disgusted": Prosody(-1.5, 0.90, -2.0),
    "fear": Prosody(3.0, 1.12, -3.0),
    "happy": Prosody(2.5, 1.08, 3.0),
    "sad": Prosody(-2.5, 0.85, -6.0),
    "surprised": Prosody(4.0, 1.02, 4.0),
}
assert tuple(PROSODY_TABLE) == EMOTIONS


def scaled(emotion: str, intensity: float) -> Prosody:
    """The table's level-3 prosody scaled by ``intensity`` (0 = neutral, 1 = level 3)."""
    p = PROSODY_TABLE[emotion]
    return Prosody(p.pitch * intensity, float(p.tempo**intensity), p.gain * intensity)


def time_stretch(x: np.ndarray, factor: float, win: int = 512, tolerance: int = 128) -> np.ndarray:
    """WSOLA: ``x`` (N,) -> about ``N * factor`` samples at the same pitch.

    Frames of ``win`` samples are overlap-added every ``win // 2`` output samples; each is taken
    from within ``tolerance`` samples of its nominal input position where it best continues the
    previous frame (maximum cross-correlation).
    """
    x = np.asarray(x, np.float32)
    if abs(factor - 1.0) < 1e-4:
        return x.copy()
    hop = win // 2
    window = np.hanning(win + 2)[1:-1].astype(np.float32)  # sums to ~1 at 50% overlap
    n_out = int(round(len(x) * factor))
    n_frames = n_out // hop + 1
    pad = np.zeros(win + tolerance, np.float32)
    xp = np.concatenate([pad, x, pad, pad])  # (N + 3 * (win + tolerance),)
    off = len(pad)
    y = np.zeros(n_frames * hop + win, np.float32)
    norm = np.zeros_like(y)
    prev = off  # input position of the previous frame
    for k in range(n_frames):
        nominal = off + int(round(k * hop / factor))
        if k == 0:
            pos = nominal
        else:
            target = xp[prev + hop : prev + hop + win]  # the natural continuation of the last frame
            lo = nominal - tolerance
            region = xp[lo : lo + win + 2 * tolerance]
            score = np.correlate(region, target, mode="valid")  # (2 * tolerance + 1,)
            pos = lo + int(np.argmax(score))
        y[k * hop : k * hop + win] += window * xp[pos : pos + win]
        norm[k * hop : k * hop + win] += window
        prev = pos
    y = y / np.maximum(norm, 1e-3)
    return y[:n_out]


def resample(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times faster: ``N / factor`` samples, pitch x ``factor``.

    Linear interpolation after a windowed-sinc low-pass when the content is squeezed (factor > 1).
    """
    x = np.asarray(x, np.float32)
    if factor > 1.0:
        taps = 31
        n = np.arange(taps) - taps // 2
        cutoff = 0.5 / factor
        h = (2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)).astype(np.float32)
        x = np.convolve(x, h / h.sum(), mode="same")
    n_out = int(round(len(x) / factor))
    return np.interp(np.arange(n_out) * factor, np.arange(len(x)), x).astype(np.float32)


def speech_level(x: np.ndarray, rate: int) -> float:
    """RMS of the speech-active part (the louder 20 ms frames), linear."""
    hop = rate // 50
    n = len(x) // hop
    if n == 0:
        return float(np.sqrt(np.mean(x**2) + 1e-12))
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    active = rms[rms >= 0.1 * rms.max()]
    return float(np.sqrt(np.mean(active**2)))


def apply(x: np.ndarray, rate: int, p: Prosody, level_db: float = -20.0) -> np.ndarray:
    """Re-speak ``x`` with prosody ``p``: pitch x 2^(pitch/12), duration / tempo, speech level
    ``level_db`` + gain dBFS, soft-limited to (-1, 1) above a knee at 0.7."""
    ratio = float(2.0 ** (p.pitch / 12.0))
    y = time_stretch(x, ratio / p.tempo)
    y = resample(y, ratio)
    target = 10 ** ((level_db + p.gain) / 20.0)
    y = y * (target / max(speech_level(y, rate), 1e-6))
    knee = 0.7
    over = np.abs(y) > knee
    y[over] = np.sign(y[over]) * (knee + (1 - knee) * np.tanh((np.abs(y[over]) - knee) / (1 - knee)))
    return y.astype(np.float32)


def onset(x: np.ndarray, rate: int, threshold_db: float = -30.0) -> int:
    """First sample of the first 20 ms frame within ``threshold_db`` of the loudest frame."""
    hop = rate // 50
    n = len(x) // hop
    if n == 0:
        return 0
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms / rms.max())
    return int(np.argmax(db > threshold_db)) * hop


def loudness_envelope(x: np.ndarray, rate: int, fps: int, n_frames: int, range_db: float = 30.0) -> np.ndarray:
    """Per-video-frame speech level in [0, 1]: RMS over 40 ms centred on each frame, in dB,
    mapped linearly from (loud - range_db) .. loud, where "loud" is the clip's 95th percentile.
    ``x`` (N,) -> (n_frames,)."""
    spf = rate / fps  # samples per video frame
    half = int(round(spf))  # 40 ms at 25 fps
    centres = ((np.arange(n_frames) + 0.5) * spf).astype(int)
    xp = np.concatenate([np.zeros(half, np.float32), x, np.zeros(2 * half + int(spf) * n_frames, np.float32)])
    idx = centres[:, None] + np.arange(2 * half)[None, :]  # (T, 2 * half) into xp
    rms = np.sqrt(np.mean(xp[idx] ** 2, axis=1) + 1e-10)
    db = 20 * np.log10(rms)
    loud = np.percentile(db, 95)
    return np.clip((db - (loud - range_db)) / range_db, 0.0, 1.0).astype(np.float32)
