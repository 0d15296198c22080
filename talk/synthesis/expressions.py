"""Landmark-driven expressions: the motion side of the sample dataset.

A neutral, frontal, closed-mouth portrait becomes a talking, emoting face by moving its dlib
68 landmarks (this module) and warping the image piecewise-affinely over a triangle mesh built on
them (talk/synthesis/rig.py; docs/findings.md "Warping real portraits into expressions"):

- ``emotion_offsets``: MEAD's 8 emotions as landmark displacements (brows, lids, mouth corners,
  lips, jaw) in inter-ocular-distance (IOD) units; the inner-lip gap is left untouched so that
  the mouth-openness ground truth stays exact.
- ``mouth_offsets`` / ``blink_offsets`` / ``similarity``: speech opening, blinks, head motion.
- ``mouth_open``: the inner-lip gap in IOD units, the lip-sync ground truth.

Coordinates are pixels ``(x, y)`` with y down; "up" in the tables means towards the forehead.
This is data synthesis for training and measuring the DICE-Talk emotion path (docs/method.md §1:
MEAD-like emotion x intensity clips) — it is not part of the learned model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from talk.core.errors import TalkError
from talk.media import landmarks as L
from talk.models.emotions import EMOTIONS


def mouth_open(pts: np.ndarray) -> float | np.ndarray:
    """Inner-lip gap in IOD units: mean distance of the facing inner-lip points / IOD.

    The lip-sync ground truth of the sample data, and what the quality benchmark re-measures
    with dlib on the rendered frames. ``pts`` (..., 68, 2) -> (...).
    """
    a = pts[..., [p[0] for p in L.INNER_LIP_PAIRS], :]
    b = pts[..., [p[1] for p in L.INNER_LIP_PAIRS], :]
    return np.linalg.norm(a - b, axis=-1).mean(-1) / L.interocular(pts)


# --------------------------------------------------------------------------------------------
# Emotions: landmark displacements per emotion (Ekman action units, mapped onto dlib points)


@dataclasses.dataclass(frozen=True)
class Move:
    """Move landmarks ``idx`` by ``out`` (away from the face's midline) and ``up`` IOD units."""

    idx: tuple[int, ...]
    out: float
    up: float


def _m(idx, out: float = 0.0, up: float = 0.0) -> Move:
    return Move(tuple(idx) if not isinstance(idx, int) else (idx,), out, up)


# Level-3 displacements in IOD units (levels scale them, see ``level_scale`` in params). Level-1
# values (x 0.5) are the ones docs/findings.md measured as readable; the inner lips move only in facing
# pairs by the same amount, so the inner-lip gap is unchanged, and the inner mouth corners
# (60, 64) move with the outer ones (48, 54): ``keep_inner_gap`` enforces both.
EMOTION_TABLE: Mapping[str, tuple[Move, ...]] = {
    "neutral": (),
    "angry": (  # AU4 brow lowerer + AU7 lid tightener + AU23/24 lips pressed, AU38 nostrils
        _m((21, 22), out=-0.07, up=-0.19), _m((20, 23), out=-0.05, up=-0.16),
        _m((19, 24), out=-0.02, up=-0.10), _m((18, 25), up=-0.04), _m(27, up=-0.06),
        _m((40, 41, 46, 47), up=0.05), _m((39, 42), up=0.01),
        _m((31, 35), out=0.04), _m((48, 54), out=-0.05, up=0.02),
        _m((55, 59), up=0.03), _m((56, 57, 58), up=0.03),
    ),
    "contempt": (  # AU14 unilateral dimpler: one corner pulled back and up (image right)
        _m(54, out=0.14, up=0.13), _m((53, 55), out=0.07, up=0.11),
        _m((63, 65), out=0.03, up=0.04), _m((46, 47), up=0.03), _m(24, up=0.04),
    ),
    "disgusted": (  # AU9 nose wrinkler + AU10 upper-lip raiser + AU4
        _m((50, 51, 52), up=0.16), _m((49, 53), up=0.11), _m((61, 62, 63), up=0.10),
        _m((65, 66, 67), up=0.10), _m((56, 57, 58), up=0.06), _m((55, 59), up=0.02),
        _m((31, 35), out=0.04, up=0.09), _m((32, 33, 34), up=0.08), _m(30, up=0.03),
        _m((21, 22), out=-0.06, up=-0.12), _m((20, 23), up=-0.08),
        _m((40, 41, 46, 47), up=0.06), _m((37, 38, 43, 44), up=-0.03),
    ),
    "fear": (  # AU1+2+4 brows up and together, AU5 upper lids up, AU20 lip stretcher
        _m((21, 22), out=-0.05, up=0.26), _m((20, 23), out=-0.03, up=0.22), _m((19, 24), up=0.16),
        _m((17, 18, 25, 26), up=0.08), _m((37, 38, 43, 44), up=0.11), _m((40, 41, 46, 47), up=0.02),
        _m((48, 54), out=0.12, up=-0.06), _m((55, 59), out=0.09, up=-0.05), _m((49, 53), out=0.07, up=-0.02),
    ),
    "happy": (  # AU6 cheek raiser + AU12 lip-corner puller
        _m((48, 54), out=0.22, up=0.20),
        _m((49, 53), out=0.11, up=0.17), _m((50, 52), out=0.04, up=0.08), _m(51, up=0.06), _m(57, up=0.05),
        _m((59, 55), out=0.11, up=0.15), _m((58, 56), out=0.04, up=0.07),
        _m((61, 63), out=0.05, up=0.10), _m((67, 65), out=0.05, up=0.10), _m((62, 66), up=0.07),
        _m((40, 41, 46, 47), up=0.06), _m((36, 45), up=0.02), _m((2, 3, 13, 14), out=0.02, up=0.03),
    ),
    "sad": (  # AU1 inner brow raiser + AU4 + AU15 lip-corner depressor + AU17 chin raiser
        _m((21, 22), out=-0.03, up=0.24), _m((20, 23), up=0.17), _m((19, 24), up=0.06),
        _m((17, 26), up=-0.05), _m((37, 38, 43, 44), up=-0.05),
        _m((48, 54), up=-0.18), _m((59, 55), up=-0.14), _m((58, 56), up=-0.05),
        _m((49, 53), up=-0.08), _m((57,), up=0.04), _m((7, 8, 9), up=0.04),
    ),
    "surprised": (  # AU1+2 brows up, AU5 upper lids up, AU26 jaw drop (lips stay as they are)
        _m((21, 22), up=0.30), _m((20, 23), up=0.32), _m((19, 24), up=0.32), _m((17, 18, 25, 26), up=0.24),
        _m((37, 38, 43, 44), up=0.11), _m((36, 39, 42, 45), up=0.02),
        _m((48, 54), out=-0.05), _m((7, 8, 9), up=-0.06),
    ),
}
assert tuple(EMOTION_TABLE) == tuple(sorted(EMOTION_TABLE, key=EMOTIONS.index)) == EMOTIONS


def keep_inner_gap(d: np.ndarray) -> np.ndarray:
    """Give each facing inner-lip pair the mean of the two displacements (gap unchanged), and
    each inner mouth corner its outer corner's displacement (they are a few px apart: moving
    them differently folds the mesh)."""
    d = d.copy()
    for a, b in L.INNER_LIP_PAIRS:
        d[[a, b]] = d[[a, b]].mean(0)
    d[60], d[64] = d[48], d[54]
    return d


def emotion_offsets(pts: np.ndarray, emotion: str, intensity: float) -> np.ndarray:
    """(68, 2) pixel displacements for ``emotion`` at ``intensity`` (1 = the level-3 table).

    ``pts`` are the neutral landmarks in an upright (eyes level) frame; "out" is away from the
    vertical line through the eye centres' midpoint.
    """
    if emotion not in EMOTION_TABLE:
        raise TalkError(f"unknown emotion '{emotion}' (one of {', '.join(EMOTIONS)})")
    unit = float(L.interocular(pts))
    mid = 0.5 * (pts[L.LEFT_EYE, 0].mean() + pts[L.RIGHT_EYE, 0].mean())
    d = np.zeros((68, 2), np.float32)
    for move in EMOTION_TABLE[emotion]:
        for i in move.idx:
            side = 1.0 if pts[i, 0] >= mid else -1.0
            if abs(pts[i, 0] - mid) < 0.02 * unit:  # on the midline: "out" has no side
                side = 0.0
            d[i, 0] += side * move.out * unit * intensity
            d[i, 1] -= move.up * unit * intensity
    return keep_inner_gap(_limit_lids(pts, d))


def _limit_lids(pts: np.ndarray, d: np.ndarray, keep: float = 0.4) -> np.ndarray:
    """Scale eyelid displacements that would close an eye below ``keep`` of its lid gap (narrow
    eyes in the source would otherwise fold over)."""
    d = d.copy()
    for up, low in L.LID_PAIRS:
        gap = float(pts[low, 1] - pts[up, 1])
        closing = float(d[up, 1] - d[low, 1])  # > 0: the lids move towards each other
        if gap > 0 and closing > (1 - keep) * gap:
            d[[up, low], 1] *= (1 - keep) * gap / closing
    return d


# Opening the mouth by a gap G (IOD units): how much of G each point moves down (negative: up),
# and inwards (corners narrow as the jaw drops). docs/findings.md: lower lip 0.9 G, upper lip 0.1 G,
# chin 0.85 G.
_OPEN_DOWN = {
    61: -0.1, 62: -0.1, 63: -0.1, 50: -0.1, 51: -0.1, 52: -0.1, 49: -0.05, 53: -0.05,
    65: 0.9, 66: 0.9, 67: 0.9, 56: 0.9, 57: 0.9, 58: 0.9, 55: 0.72, 59: 0.72,
    48: 0.4, 54: 0.4, 60: 0.4, 64: 0.4,
    8: 0.85, 7: 0.8, 9: 0.8, 6: 0.65, 10: 0.65, 5: 0.45, 11: 0.45, 4: 0.25, 12: 0.25, 3: 0.1, 13: 0.1,
}
_OPEN_IN = {48: 0.06, 54: 0.06, 60: 0.06, 64: 0.06, 49: 0.02, 53: 0.02, 59: 0.03, 55: 0.03}


def mouth_offsets(pts: np.ndarray, gap: float) -> np.ndarray:
    """(68, 2) pixel displacements opening the mouth by ``gap`` IOD (inner-lip gap grows by it)."""
    unit = float(L.interocular(pts))
    mid = 0.5 * (pts[L.LEFT_EYE, 0].mean() + pts[L.RIGHT_EYE, 0].mean())
    d = np.zeros((68, 2), np.float32)
    for i, w in _OPEN_DOWN.items():
        d[i, 1] = w * gap * unit
    for i, w in _OPEN_IN.items():
        d[i, 0] = -np.sign(pts[i, 0] - mid) * w * gap * unit
    return d


def blink_offsets(pts: np.ndarray, amount: float) -> np.ndarray:
    """(68, 2) displacements closing the eyelids by ``amount`` in [0, 1] (1 = lids meet).

    ``pts`` is the layout to close (after expression offsets): the upper lid travels 90% of the
    current lid gap, the lower lid 10%.
    """
    d = np.zeros((68, 2), np.float32)
    for up, low in L.LID_PAIRS:
        gap = pts[low] - pts[up]
        d[up] += 0.9 * amount * gap
        d[low] -= 0.1 * amount * gap
    return d


def similarity(angle_deg: float, scale: float, shift: Sequence[float], centre: Sequence[float]) -> np.ndarray:
    """(2, 3) similarity: rotate by ``angle_deg`` and scale about ``centre``, then shift (px)."""
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle_deg), float(scale))
    m[:, 2] += np.asarray(shift, np.float64)
    return m.astype(np.float32)


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]
